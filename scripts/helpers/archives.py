"""Archives: checksums and safe extraction of tar (Kuzushiji-Kanji) and zip (calligraphy) files.

Nothing is written before every entry is checked (no absolute path, no `..`, no link); files go to a temporary
folder and are moved into place only when all went well. Uses: catalogue."""
from __future__ import annotations

import hashlib, os, re, shutil, stat, tarfile, zipfile, zlib
from pathlib import Path

from .catalogue import CALLIGRAPHY_CLASSES


class DownloadError(RuntimeError):
    "A download failed in a way the user must act on; the message says what to do."


def md5sum(path) -> str:
    "The md5 of a file, read in chunks (Python's `hashlib.file_digest`)."
    with open(path, 'rb') as f: return hashlib.file_digest(f, 'md5').hexdigest()


def name_hash(name) -> str | None:
    "The hash prefix torchvision puts in a weight file's name (`resnet34-b627a593.pth`: 'b627a593'), as torch.hub reads it."
    m = re.search(r'-([a-f0-9]+)\.', str(name))
    return m.group(1) if m else None


def hash_matches_name(path) -> bool:
    "Does the file's sha256 start with the hash in its name? (torch.hub's own check for downloaded weights.)"
    with open(path, 'rb') as f: digest = hashlib.file_digest(f, 'sha256').hexdigest()
    prefix = name_hash(Path(path).name.removesuffix('.part'))
    return bool(prefix) and digest.startswith(prefix)


def readable(raw: bytes) -> str:
    "A file name for people: UTF-8, else GBK (most of this data set), else the bytes' repr."
    for enc in ('utf-8', 'gbk'):
        try: return raw.decode(enc)
        except UnicodeDecodeError: pass
    return repr(raw)


def extract_tar(tar_path, dest, quiet=False) -> Path:
    """Extract a tar safely: refuse absolute paths, `..`, links and devices before anything is written,
    extract into a temporary folder and move the result in place only when all went well."""
    tar_path, dest = Path(tar_path), Path(dest)
    try:
        with tarfile.open(tar_path) as tf: members = tf.getmembers()
    except tarfile.TarError as e:
        why = str(e).splitlines()[-1].strip(' -)')  # tarfile lists every compression it tried, one per line
        raise DownloadError(f'{tar_path.name} is not a readable tar archive ({why}): delete it and download again.') from None
    with tarfile.open(tar_path) as tf:
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith(('/', '\\')) or Path(m.name).is_absolute() or '..' in parts:
                raise DownloadError(f'{tar_path.name}: refusing unsafe path {m.name!r}; the archive was not extracted.')
            if not (m.isfile() or m.isdir()):
                raise DownloadError(f'{tar_path.name}: refusing {m.name!r} (a link or special file); '
                                    f'the archive was not extracted.')
        tops = sorted({Path(m.name).parts[0] for m in members if Path(m.name).parts})  # a '.' member has none
        if all((dest / t).exists() for t in tops):
            if not quiet: print(f'  {tar_path.name}: already extracted')
            return dest
        tmp = dest / f'.{tar_path.stem}.extracting'
        if tmp.exists(): shutil.rmtree(tmp)
        try: tf.extractall(tmp, members=members)
        except (tarfile.TarError, OSError, EOFError) as e:  # a file cut short: its data ends before its size says
            shutil.rmtree(tmp, ignore_errors=True)
            raise DownloadError(f'{tar_path.name} is damaged or truncated ({e}): delete it and download again.') from None
    _move_into_place(tmp, dest, tops)
    if not quiet: print(f'  {tar_path.name}: extracted {len(members)} entries into {dest}')
    return dest


def _move_into_place(tmp, dest, names):
    "Replace each `dest/<name>` with the freshly extracted `tmp/<name>`, then remove the empty `tmp`."
    for n in names:
        if (dest / n).exists(): shutil.rmtree(dest / n)
        os.replace(tmp / n, dest / n)
    tmp.rmdir()


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The entry's name as the bytes stored in the zip. Without the UTF-8 flag (0x800) Python decoded
    them as cp437, which maps all 256 bytes one to one, so encoding back gives the original (here GBK) bytes."""
    return info.filename.encode('utf-8' if info.flag_bits & 0x800 else 'cp437')


def _unsafe(raw: bytes, info: zipfile.ZipInfo) -> str | None:
    "Why this entry must not be extracted, or None."
    parts = re.split(rb'[/\\]', raw)
    if raw.startswith((b'/', b'\\')) or re.match(rb'^[A-Za-z]:', raw): return 'an absolute path'
    if b'..' in parts: return 'a path with ..'
    if stat.S_ISLNK(info.external_attr >> 16): return 'a symbolic link'
    return None


def _class_path(raw: bytes, classes) -> tuple[str, list[bytes]] | None:
    "(class, path inside the class folder) for `[top/]data/<class>/...` entries, else None."
    parts = [p for p in raw.split(b'/') if p]
    for i in (1, 0):  # GitHub's layout has a top folder `<repo>-<commit>/`; a hand-made zip may not
        if len(parts) > i + 1 and parts[i] == b'data' and parts[i + 1].decode('ascii', 'replace') in classes:
            return parts[i + 1].decode('ascii'), parts[i + 2:]
    return None


def extract_zip(zip_path, dest, classes=CALLIGRAPHY_CLASSES, force=False, quiet=False) -> Path:
    """Extract the `data/<class>/` folders of the zip into `dest/<class>/`, safely: every entry is checked
    (no absolute path, no `..`, no symlink) before anything is written; the files go to a temporary folder
    and are moved into place only when all went well. File names keep their exact bytes (GBK included)."""
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f'{zip_path.name} is not a readable zip ({e}): delete it and download again.') from e
    with zf:
        entries = [(i, _raw_name(i)) for i in zf.infolist()]
        for info, raw in entries:
            if why := _unsafe(raw, info):
                raise DownloadError(f'{zip_path.name}: refusing {raw!r} ({why}); the archive was not extracted.')
        wanted = [(info, *cp) for info, raw in entries if (cp := _class_path(raw, classes))]
        found = sorted({c for _, c, _ in wanted})
        if not found:
            raise DownloadError(f'{zip_path.name} has no data/<class>/ folders for {", ".join(classes)}: '
                                  f'is it the right archive? Delete it and download again.')
        if all((dest / c).is_dir() for c in found) and not force:
            if not quiet: print(f'  {zip_path.name}: already extracted')
            return dest
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / '.extracting'
        if tmp.exists(): shutil.rmtree(tmp)
        try:
            for info, c, rest in wanted:
                # readable UTF-8 names (GBK decoded): every file system takes them, macOS's too
                target = Path(tmp, c, *(readable(p) for p in rest))
                if info.is_dir() or not rest: target.mkdir(parents=True, exist_ok=True); continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, 'wb') as out: shutil.copyfileobj(src, out, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DownloadError(f'{zip_path.name} is damaged ({e}): delete it and download again.') from e
    _move_into_place(tmp, dest, found)
    if not quiet: print(f'  {zip_path.name}: extracted {len(wanted)} entries into {dest}')
    return dest
