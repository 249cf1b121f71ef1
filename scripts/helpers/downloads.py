"""Downloads: official files fetched from the first mirror that answers, resumed, retried, verified.

Written here rather than taken from a library (fastai's `untar_data`, torchvision's `download_url`) because
the official host is slow and sometimes down: this tries mirrors in turn (a classroom folder or URL too), fails
fast on a host that never answers (about 8 s a mirror), resumes broken transfers with HTTP Range, and gives a
file its final name only once its md5 matches. It also serves torchvision's ImageNet weights from a classroom mirror
into torch's cache, each checked by the hash in its name. Uses: settings, catalogue, archives, cleaning."""
from __future__ import annotations

import http.client, json, os, shutil, socket, time, urllib.error, urllib.request
from pathlib import Path

from . import settings
from .archives import DownloadError, extract_tar, extract_zip, hash_matches_name, md5sum
from .catalogue import CALLIGRAPHY_ZIP, HOSTS, KNOWN_MIRRORS, MIRROR_ENV, OFFICIAL_URL, dataset_files
from .cleaning import build_subset, prepare


def _mirror_bases(dataset, mirror=None) -> list[str]:
    "Where to look, in order: the user's mirror alone if given (argument or env var), else the known ones."
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror: return [str(mirror)]
    return HOSTS.get(dataset) or [m.format(dataset=dataset) for m in KNOWN_MIRRORS]


def _size(n): return f'{n / 1e6:.1f} MB' if n >= 1e5 else f'{n / 1e3:.1f} kB'


def _progress(name, done, total, t0):
    mb = 1 / 1e6
    pct = f'{100 * done / total:3.0f}%' if total else '    '
    tot = f'/{total * mb:.1f}' if total else ''
    rate = done * mb / max(time.time() - t0, 1e-6)
    print(f'\r  {name}  {pct} {done * mb:.1f}{tot} MB  {rate:.1f} MB/s', end='', flush=True)


def _fetch(url, part: Path, timeout: float, retries: int, quiet: bool):
    """Download `url` into `part`, appending to what is already there (HTTP Range), retrying with
    backoff on transient errors. Raises `urllib.error.HTTPError` for 4xx, `OSError` when unreachable."""
    name = part.name[:-len('.part')]
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={'User-Agent': 'kuzushiji-fastai',
                                                   **({'Range': f'bytes={have}-'} if have else {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if have and r.status != 206: have = 0  # the server ignored Range: start again
                total = r.length + have if r.length is not None else None
                t0, done = time.time(), have
                last = t0  # first update after 0.5 s: small files print one line only
                with open(part, 'ab' if have else 'wb') as f:
                    while chunk := r.read(1 << 16):
                        f.write(chunk); done += len(chunk)
                        if not quiet and time.time() - last > 0.5: _progress(name, done, total, t0); last = time.time()
                if total is not None and done < total:
                    raise http.client.IncompleteRead(b'', total - done)
                return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # Range past the end: what we have is all there is
                return
            if e.code < 500 and e.code != 429: raise
            err = e
        # A plain URLError (refused, no such host, connect timeout) propagates: try the next mirror.
        except (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
            got = (part.stat().st_size if part.exists() else 0) - have
            if isinstance(e, (socket.timeout, TimeoutError)) and got <= 0:
                raise urllib.error.URLError(f'no answer within {timeout:g}s (timed out)') from e  # silent host: next mirror
            err = e  # broke off mid-transfer: resume from what we have
        if attempt < retries:
            wait = 0.5 * 2 ** attempt
            if not quiet: print(f'\n  {name}: {type(err).__name__}, retrying in {wait:.1f}s (resuming)', flush=True)
            time.sleep(wait)
    raise err


def download_file(name, md5, dest, mirror=None, dataset='kmnist', force=False, timeout=8., retries=3,
                  quiet=False, by_name_hash=False) -> Path:
    """Fetch one file into `dest`, verified. A verified file already there is kept. The download goes
    to `<name>.part` and takes its final name only once its md5 matches (`by_name_hash`: once its sha256 starts with
    the hash in its name, as torchvision's weight files are checked)."""
    dest = Path(dest); dest.mkdir(parents=True, exist_ok=True)
    final, part = dest / name, dest / f'{name}.part'
    if by_name_hash: md5 = None
    def verified(path): return hash_matches_name(path) if by_name_hash else md5 is None or md5sum(path) == md5
    if final.exists() and not force:
        if verified(final):
            if not quiet: print(f'  {name}: already here, ' + ('verified' if md5 or by_name_hash else
                                                              'no checksum published to verify'))
            return final
        if not quiet: print(f'  {name}: present but its checksum does not match; downloading again')
    if force and part.exists(): part.unlink()
    errors = []
    for base in _mirror_bases(dataset, mirror):
        src = base.rstrip('/') + '/' + name
        try:
            if '://' in src:
                _fetch(src, part, timeout, retries, quiet)
            else:  # a local folder used as a mirror
                if not Path(src).is_file(): raise FileNotFoundError(f'no such file: {src}')
                shutil.copyfile(src, part)
        except urllib.error.HTTPError as e:
            errors.append(f'{src}: HTTP {e.code} {e.reason}'); continue
        except (OSError, http.client.HTTPException) as e:
            errors.append(f'{src}: {getattr(e, "reason", None) or e}'); continue
        if not verified(part):
            why = ('its sha256 does not start with the hash in its name' if by_name_hash else
                   f'checksum mismatch (md5 {md5sum(part)}, expected {md5})')
            part.unlink()
            errors.append(f'{src}: {why}; the copy was deleted')
            continue
        os.replace(part, final)
        if not quiet:
            check = 'sha256 matches its name' if by_name_hash else f'md5 {"verified" if md5 else "(none published)"}'
            print(f'\r  {name}: {_size(final.stat().st_size)}, {check}  <- {base}'.ljust(70))
        return final
    if by_name_hash: raise DownloadError(
        f"Could not download {name}.\n  " + '\n  '.join(errors) + f"\nWhat to do: on a machine with internet access run "
        f"python scripts/download_data.py --weights ... --dest FOLDER, then serve FOLDER and set {MIRROR_ENV}.")
    raise DownloadError(
        f"Could not download {name}.\n  " + '\n  '.join(errors) +
        f"\nWhat to do: download the file by hand (or from a classroom copy) into a folder, then run\n"
        f"  python scripts/download_data.py --dataset {dataset} --mirror FOLDER_OR_URL\n"
        f"(or set {MIRROR_ENV}=FOLDER_OR_URL). Official files: {(HOSTS.get(dataset) or [OFFICIAL_URL.format(dataset=dataset)])[0]}")


def _md5_table() -> dict:
    "Optional override of the checksum table, for tests and for mirrors of re-made files (a JSON file)."
    p = os.environ.get('KUZUSHIJI_MD5_TABLE')
    return json.loads(Path(p).read_text()) if p else {}


def download(dataset='kmnist', fmt=None, dest=None, mirror=None, force=False, md5s=None, quiet=False, max_side=384,
             **kwargs) -> Path:
    """Download every file of `dataset` in format `fmt` into `dest` (default `data/<dataset>`), each one
    verified against its official md5 (or `md5s`, a `{name: md5}` table). Returns the folder. Calligraphy is
    also extracted and cleaned (`prepare`, images' shorter side at most `max_side`): its prepared folder is returned."""
    dest = Path(dest) if dest else settings.DATA_DIR / dataset
    if dataset == 'calligraphy' and (dest / 'prepared' / 'manifest.csv').exists() and not force:
        if not quiet: print(f'  calligraphy: already prepared in {dest / "prepared"}')
        return dest / 'prepared'
    md5s = {**_md5_table(), **(md5s or {})}
    if dataset == 'calligraphy': kwargs.setdefault('timeout', 60.)  # GitHub builds the zip before sending a byte
    for name, md5 in dataset_files(dataset, fmt):
        download_file(name, md5s.get(name, md5), dest, mirror=mirror, dataset=dataset, force=force,
                      quiet=quiet, **kwargs)
    if dataset == 'kkanji': extract_tar(dest / 'kkanji.tar', dest, quiet=quiet)
    if dataset == 'calligraphy':
        extract_zip(dest / CALLIGRAPHY_ZIP, dest / 'raw', force=force, quiet=quiet)
        return prepare(dest / 'raw', dest / 'prepared', max_side=max_side, force=force, quiet=quiet)['path']
    return dest


def download_subset(dest=None, mirror=None, force=False, quiet=False) -> Path:
    """Notebook 05's committed run trained on 600 of the calligraphy images, 200 per style: make that subset, so its
    time and scores can be reproduced. The full archive is downloaded into data/calligraphy/ (kept: `download` uses it
    later), and `dest` (default data/calligraphy-subset) gets one zip under the archive's own name holding only those
    images, re-encoded as the run's copy was (`cleaning.build_subset`): serve `dest` as a mirror. Returns the zip."""
    full_dir = settings.DATA_DIR / 'calligraphy'
    dest = Path(dest) if dest else settings.DATA_DIR / 'calligraphy-subset'
    if dest.resolve() == full_dir.resolve():
        raise ValueError(f"the subset's zip has the full archive's name, and {full_dir} holds the full archive: "
                         f"choose another --dest.")
    out = dest / CALLIGRAPHY_ZIP
    if out.exists() and not force:
        if not quiet: print(f"  {out}: notebook 05's subset is already here")
        return out
    full = download_file(CALLIGRAPHY_ZIP, None, full_dir, mirror=mirror, dataset='calligraphy', quiet=quiet, timeout=60.)
    return build_subset(full, out, quiet=quiet)['path']


def weight_file(arch) -> str:
    "The file of ImageNet weights that fastai's `vision_learner(arch, pretrained=True)` asks torchvision for (DEFAULT)."
    from torchvision.models import get_model_weights
    return get_model_weights(arch).DEFAULT.url.rsplit('/', 1)[1]


def download_weights(archs=('resnet18', 'resnet34', 'resnet50'), dest=None, mirror=None, force=False, quiet=False):
    """torchvision's ImageNet weight files for `archs` into `dest` (default data/weights), for a classroom mirror:
    put them beside the data files a teacher serves. Each is checked by the sha256 prefix in its name."""
    dest = Path(dest) if dest else settings.DATA_DIR / 'weights'
    return [download_file(weight_file(a), None, dest, mirror=mirror, dataset='weights', force=force, quiet=quiet,
                          by_name_hash=True) for a in archs]


def install_weights(arch, mirror=None, quiet=False):
    """Copy `arch`'s ImageNet weights from a classroom mirror (`mirror`, or $KUZUSHIJI_MIRROR) into torch's cache, where
    fastai looks first, so a room without internet still trains from ImageNet weights. Nothing to do without a
    mirror or when the file is cached. Returns the cached file, or None: then fastai tries the official host."""
    import torch
    name, mirror = weight_file(arch), mirror or os.environ.get(MIRROR_ENV)
    cached = Path(torch.hub.get_dir()) / 'checkpoints' / name
    if cached.exists() or not mirror: return cached if cached.exists() else None
    try: return download_file(name, None, cached.parent, mirror=mirror, dataset='weights', quiet=quiet, by_name_hash=True)
    except DownloadError as e:
        if not quiet: print(f"No good copy of {name} on the mirror {mirror} ({e.args[0].splitlines()[1].strip()}); "
                            f"trying the official host.")
        return None
