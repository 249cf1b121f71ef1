// The service worker: the page works offline, reloads included. On the first visit it keeps the page, ONNX Runtime
// and the kana model in a cache named by the build; the kanji model and the example sheets are kept the first time
// they are fetched. scripts/build_site.py writes the build's name and the files below: a new build is a new cache,
// and the old one is deleted once the new worker takes over.
const BUILD = 'dev';
const FILES = [];
const CACHE = `kuzushiji-${BUILD}`;

// The page has just fetched these files: 'no-cache' asks the server whether they changed (a 304 answer carries no
// bytes) instead of downloading them twice, and never takes an older build's copy from the browser's HTTP cache
self.addEventListener('install', event => {
  event.waitUntil(caches.open(CACHE).then(cache => cache.addAll(FILES.map(f => new Request(f, {cache: 'no-cache'}))))
    .then(() => self.skipWaiting()));
});

self.addEventListener('activate', event => {
  event.waitUntil(caches.keys()
    .then(names => Promise.all(names.filter(n => n.startsWith('kuzushiji-') && n !== CACHE).map(n => caches.delete(n))))
    .then(() => self.clients.claim()));
});

// From the cache first (the files of a build never change), else from the network, kept for next time
self.addEventListener('fetch', event => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== location.origin) return;
  event.respondWith(caches.open(CACHE).then(async cache => {
    const hit = await cache.match(event.request, {ignoreSearch: true});
    if (hit) return hit;
    const response = await fetch(event.request);
    if (response.ok) cache.put(event.request, response.clone());
    return response;
  }));
});
