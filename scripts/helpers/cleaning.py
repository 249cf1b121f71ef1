"""Cleaning messy web images: a decoded, deduplicated, resized copy of the calligraphy class folders.

The data set (1,829 files in 3 class folders) is real web data: a few files are not images, 822 names are
GBK bytes (not UTF-8), 7 groups of byte-identical duplicates (one in two classes), RGB/grayscale JPEG, PNG
with alpha, a GIF, sizes from under 256 px to several thousand. The originals are never changed: `prepare`
writes a new folder with safe ASCII names, and `report.csv` says why each skipped file was skipped.
`build_subset` makes the 600-image subset of notebook 05's committed run from the full archive.
Uses: catalogue, archives."""
from __future__ import annotations

import csv, hashlib, io, os, shutil, zipfile
from pathlib import Path

import pandas as pd
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .archives import DownloadError, _class_path, _raw_name, md5sum, readable
from .catalogue import CALLIGRAPHY_CLASSES, CALLIGRAPHY_COMMIT, CALLIGRAPHY_REPO


REPORT_COLUMNS = ['file', 'class', 'reason']

MANIFEST_COLUMNS = ['file', 'class', 'source', 'source_md5', 'width', 'height']


def _scan(src: bytes):
    "(name bytes, is a regular file, is a folder) for each entry of `src`, sorted by name bytes."
    with os.scandir(src) as it:
        return sorted((e.name, e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False)) for e in it)


def to_rgb(im):
    """First frame, EXIF rotation applied, as RGB; transparent areas (RGBA, LA, PA, P or L/RGB with a
    transparency colour) are composited onto white, the paper colour, not black."""
    im.seek(0)
    im = ImageOps.exif_transpose(im)
    if im.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in im.info:
        im = im.convert('RGBA')
        bg = Image.new('RGBA', im.size, (255, 255, 255, 255))
        bg.alpha_composite(im)
        return bg.convert('RGB')
    return im.convert('RGB')


def shrink(im, max_side):
    "Downsize so that the shorter side is `max_side` (never upsample)."
    w, hgt = im.size
    short = min(w, hgt)
    if short <= max_side: return im
    size = (max_side, max(1, round(hgt * max_side / w))) if w <= hgt else (max(1, round(w * max_side / hgt)), max_side)
    return im.resize(size, Image.LANCZOS)


def _decode(data: bytes):
    "(PIL image, None) or (None, reason)."
    old, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False  # a truncated file is an error
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im, None
    except UnidentifiedImageError:
        return None, 'not an image'
    except Exception as e:  # OSError, SyntaxError, ValueError, DecompressionBombError...
        return None, f'truncated or corrupt image: {e}'
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _write_csv(path, columns, rows):
    with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.DictWriter(f, columns); w.writeheader(); w.writerows(rows)


def _read_csv(path):
    with open(path, newline='', encoding='utf-8') as f: return list(csv.DictReader(f))


def _saved(dest: Path, classes) -> dict:
    "The result of an earlier `prepare`, read back from its CSV files."
    kept = dict.fromkeys(classes, 0)
    for r in _read_csv(dest / 'manifest.csv'): kept[r['class']] = kept.get(r['class'], 0) + 1
    return {'kept': kept, 'skipped': read_report(dest), 'path': dest}


def _collect(src: Path, classes):
    "Files per class as (name bytes, path bytes, md5), and report rows for what is not in a class folder."
    bsrc, files, skipped = os.fsencode(src), {}, []
    for name, is_file, is_dir in _scan(bsrc):
        c = name.decode('utf-8', 'replace')
        if is_dir and c in classes:
            files[c] = []
            for n, f, d in _scan(os.path.join(bsrc, name)):
                if not f:
                    skipped.append({'file': readable(n), 'class': c,
                                    'reason': 'a folder (not looked into)' if d else 'not a regular file'})
                    continue
                path = os.path.join(bsrc, name, n)
                files[c].append((n, path, md5sum(path)))
        elif is_dir:
            skipped.append({'file': readable(name) + '/', 'class': '',
                            'reason': f'folder not in CALLIGRAPHY_CLASSES ({", ".join(classes)}): ignored'})
        else:
            skipped.append({'file': readable(name), 'class': '', 'reason': 'not in a class folder'})
    return files, skipped


def prepare(src, dest, max_side=384, force=False, classes=CALLIGRAPHY_CLASSES, quiet=False) -> dict:
    """Write a clean copy of the class folders `src/<class>/` into `dest/<class>/<class>_NNNN.jpg`:
    every file that PIL decodes, as RGB (transparency on white, GIF first frame), shorter side at most
    `max_side`, JPEG quality 90. Skipped, with a reason in `dest/report.csv`: files that are not images or
    are truncated/corrupt; byte-identical duplicates within a class (the first by name bytes is kept);
    files whose bytes appear in two or more classes (dropped from all: the label is unknown); files
    directly in `src`; folders not in `classes` (one row each, their content is not read).
    `dest/manifest.csv` lists every output with its source name and md5. `src` is only read. The work
    is done in `<dest>.tmp`, renamed to `dest` at the end. If `dest/manifest.csv` exists and not `force`,
    the saved result is returned without decoding anything.
    Returns {'kept': {class: n}, 'skipped': [{'file', 'class', 'reason'}], 'path': dest}."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir(): raise FileNotFoundError(f'no such folder: {src}')
    rs, rd = src.resolve(), dest.resolve()
    if rs == rd or rd in rs.parents or rs in rd.parents:
        raise ValueError(f'dest ({dest}) must be outside src ({src}) and must not contain it: the originals are kept apart.')
    if (dest / 'manifest.csv').exists() and not force:
        if not quiet: print(f'  {dest}: already prepared')
        return _saved(dest, classes)
    files, skipped = _collect(src, classes)
    if not files:
        raise FileNotFoundError(f'{src} holds none of the class folders {", ".join(classes)}: pass the folder that '
                                f'contains them.')
    in_classes = {}
    for c, fs in files.items():
        for _, _, m in fs: in_classes.setdefault(m, set()).add(c)
    tmp = dest.with_name(dest.name + '.tmp')
    if tmp.exists(): shutil.rmtree(tmp)
    kept, manifest = dict.fromkeys(classes, 0), []
    try:
        for c in classes:
            if c not in files: continue
            (tmp / c).mkdir(parents=True)
            first = {}
            for name, path, m in files[c]:
                row = {'file': readable(name), 'class': c}
                if len(in_classes[m]) > 1:
                    skipped.append({**row, 'reason': f'same file in classes {", ".join(sorted(in_classes[m]))}'}); continue
                if m in first:
                    skipped.append({**row, 'reason': f'duplicate of {first[m]}'}); continue
                first[m] = row['file']
                with open(path, 'rb') as f: im, why = _decode(f.read())
                if why: skipped.append({**row, 'reason': why}); continue
                try:
                    im = shrink(to_rgb(im), max_side)
                except Exception as e:  # a decoder that fails only on conversion
                    skipped.append({**row, 'reason': f'truncated or corrupt image: {e}'}); continue
                out = f'{c}/{c}_{kept[c]:04d}.jpg'
                im.save(tmp / out, 'JPEG', quality=90)
                manifest.append({'file': out, 'class': c, 'source': row['file'], 'source_md5': m,
                                 'width': im.width, 'height': im.height})
                kept[c] += 1
        if not sum(kept.values()):
            raise ValueError(f'No usable image in {src}: every file was skipped ({len(skipped)} files). Is it the right folder?')
        _write_csv(tmp / 'report.csv', REPORT_COLUMNS, skipped)
        _write_csv(tmp / 'manifest.csv', MANIFEST_COLUMNS, manifest)  # written last: it marks a complete folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest.with_name(dest.name + '.old')
    if old.exists(): shutil.rmtree(old)
    if dest.exists(): os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists(): shutil.rmtree(old)
    if not quiet:
        print(f'  prepared {sum(kept.values())} images into {dest} '
              f'({", ".join(f"{c} {n}" for c, n in kept.items())}); skipped {len(skipped)}, see report.csv')
    return {'kept': kept, 'skipped': skipped, 'path': dest}


def read_report(path):
    "The preparation report of a prepared folder as a list of {'file', 'class', 'reason'}."
    p = Path(path) / 'report.csv'
    return _read_csv(p) if p.exists() else []


def calligraphy_report(dest):
    "The skipped files of a prepared folder (`dest/report.csv`) as a DataFrame: file, class, reason."
    return pd.DataFrame(read_report(dest), columns=REPORT_COLUMNS)


SUBSET = Path(__file__).with_name('calligraphy_subset.csv')
"""Notebook 05's committed run trained on 600 of the archive's images, 200 per style. This file names them: each
original by the git blob sha1 and md5 of its bytes (metadata, not images), with its name and md5 in the run's copy."""


def blob_sha1(data: bytes) -> str:
    "Git's name for a file's bytes (`git hash-object`): how `SUBSET` finds each original in the archive."
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def reencode(data: bytes, max_side=384, max_long=1024, quality=88) -> bytes:
    """One image as the run's copy holds it: RGB (transparency on white), shrunk with Lanczos so that the shorter side
    is at most `max_side` and the longer at most `max_long`, JPEG at `quality` with optimised Huffman tables. Read off
    that copy (its sizes, and its bytes where this reproduces them), not documented with it."""
    im = to_rgb(Image.open(io.BytesIO(data)))
    w, h = im.size
    s = min(1, max_side / min(w, h), max_long / max(w, h))
    if s < min(1, max_side / min(w, h)): im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    else: im = shrink(im, max_side)
    out = io.BytesIO()
    im.save(out, 'JPEG', quality=quality, optimize=True)
    return out.getvalue()


def build_subset(full_zip, out_zip, listing=None, quiet=False) -> dict:
    """From the full calligraphy archive `full_zip`, write `out_zip`: only the images `listing` names (found by their
    bytes' git blob sha1, within their class), each re-encoded as the committed run's copy was (`reencode`) under its
    name there, in the archive's own layout (`<repo>-<commit>/data/<class>/`), so that a mirror serving it under the
    archive's name gives notebook 05 exactly those images. Nothing is written unless every image is found.
    `listing` (default `SUBSET`): a CSV with columns file, class, source_blob_sha1, source_md5, md5.
    Returns {'path', 'kept': {class: n}, 'identical': how many are byte for byte the run's copy}."""
    full_zip, out_zip = Path(full_zip), Path(out_zip)
    with open(listing or SUBSET, newline='', encoding='utf-8') as f: rows = list(csv.DictReader(f))
    want = {(r['class'], r['source_blob_sha1']): r for r in rows}
    found = {}
    try:
        with zipfile.ZipFile(full_zip) as zf:
            for info in zf.infolist():
                cp = None if info.is_dir() else _class_path(_raw_name(info), CALLIGRAPHY_CLASSES)
                if cp is None: continue
                data = zf.read(info)
                key = (cp[0], blob_sha1(data))
                if key in want and key not in found: found[key] = data
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f'{full_zip.name} is not a readable zip ({e}): delete it and download again.') from e
    missing = [r for k, r in want.items() if k not in found]
    if missing:
        raise DownloadError(f"{full_zip} lacks {len(missing)} of the {len(want)} images of notebook 05's subset (the "
                            f"first: {missing[0]['class']}/{missing[0]['file']}, sha1 {missing[0]['source_blob_sha1']}): "
                            f"is it the full archive of commit {CALLIGRAPHY_COMMIT[:7]}? Delete it and download again.")
    top = f"{CALLIGRAPHY_REPO.rsplit('/', 1)[1]}-{CALLIGRAPHY_COMMIT}/data"
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_zip.with_name(out_zip.name + '.part')
    kept, identical = dict.fromkeys(CALLIGRAPHY_CLASSES, 0), 0
    with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_STORED) as z:  # JPEGs do not compress; fixed dates: the same bytes every time
        for (c, _), r in sorted(want.items(), key=lambda kv: (kv[0][0], kv[1]['file'])):
            img = reencode(found[c, r['source_blob_sha1']])
            z.writestr(zipfile.ZipInfo(f"{top}/{c}/{r['file']}", date_time=(1980, 1, 1, 0, 0, 0)), img)
            kept[c] += 1; identical += hashlib.md5(img).hexdigest() == r['md5']
    os.replace(tmp, out_zip)
    if not quiet:
        print(f"  notebook 05's subset: {sum(kept.values())} images ({', '.join(f'{c} {n}' for c, n in kept.items())}) "
              f"into {out_zip}; {identical} byte for byte as in the committed run's copy"
              + ('' if identical == len(want) else ', the rest re-encoded a little differently (the same pictures)'))
    return {'path': out_zip, 'kept': kept, 'identical': identical}
