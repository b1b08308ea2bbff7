"""Find an image folder's classes and files: hidden entries skipped, no link followed twice or out of the root.

torchvision's ``find_classes``/``make_dataset`` list hidden folders (``.ipynb_checkpoints``) as classes and walk with
``os.walk(followlinks=True)``: a link such as ``a/up -> ..`` is followed again and again, so one file becomes many
samples (and the same image lands in train, val and test). No maintained library walks a tree the way a dataset
needs, so this small walk does: it follows a folder link only to a folder inside the root not yet walked, and keeps
each file once (by its real path).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from toolkit.errors import ToolkitError


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


class FolderWalk:
    """One walk of a data root: the folders and files already taken, and the links it did not follow.

    Args:
        root: the data root; links leading out of it are not followed.
    """

    def __init__(self, root: Path) -> None:
        self.root_real = os.path.realpath(root)
        self.dirs: set[str] = {self.root_real}
        self.files: dict[str, tuple[str, str]] = {}  # real path -> (the path it was first found as, its class folder)
        self.skipped: list[str] = []

    def class_folders(self, folder: Path) -> list[str]:
        """The class subfolders of ``folder``, sorted; hidden folders (``.name``) are no classes."""
        if not folder.is_dir():
            return []
        self.dirs.add(os.path.realpath(folder))
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        for name in names:  # a class folder is taken before any walk, so no link inside another class reaches it
            self.dirs.add(os.path.realpath(folder / name))
        return names

    def _follow(self, path: str) -> bool:
        real = os.path.realpath(path)
        if not _inside(real, self.root_real) or real in self.dirs:
            self.skipped.append(path)
            return False
        self.dirs.add(real)
        return True

    def images(self, folder: Path) -> list[str]:
        """The image files under ``folder`` (recursively, sorted), each real file once; hidden entries skipped."""
        found: list[str] = []
        for top, subdirs, names in os.walk(folder, followlinks=True):
            subdirs[:] = [d for d in sorted(subdirs) if not d.startswith(".") and self._follow(os.path.join(top, d))]
            for name in sorted(names):
                path = os.path.join(top, name)
                if not _is_image(name):
                    continue
                real = os.path.realpath(path)
                if not _inside(real, self.root_real):
                    self.skipped.append(path)
                elif real not in self.files:
                    self.files[real] = (path, str(folder))
                    found.append(path)
                elif self.files[real][1] == str(folder):
                    self.skipped.append(path)  # the same image twice in one class: counted once
                else:
                    raise ToolkitError(
                        f"image {path} is the file {self.files[real][0]} (a link): one image in two classes or "
                        "splits would be counted twice, or tested on what was trained on; remove the link"
                    )
        return found

    def warn_skipped(self) -> None:
        """One warning naming how many links were not followed (out of the root, or to what was already read)."""
        if self.skipped:
            warnings.warn(
                f"image folder {self.root_real}: {len(self.skipped)} link(s) not followed (they lead out of the root "
                f"or to images/folders already read), e.g. {self.skipped[0]}; each image counts once",
                stacklevel=2,
            )


def class_samples(
    folder: Path, walk: FolderWalk, class_to_idx: dict[str, int] | None = None
) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, class names) of a class-per-subfolder tree; an empty class folder is refused.

    Args:
        folder: holds one subfolder per class.
        walk: the walk of the data root this folder belongs to (shared by train/val/test).
        class_to_idx: the classes of ``train`` when reading ``val``/``test``; default: ``folder``'s own.
    """
    names = walk.class_folders(folder)
    if class_to_idx is None:
        if not names:
            raise ToolkitError(f"folder {folder} has no class subfolders; put each class's images in root/<class>/")
        class_to_idx = {name: i for i, name in enumerate(names)}
    paths: list[str] = []
    labels: list[int] = []
    for name in names:
        if name not in class_to_idx:
            continue
        files = walk.images(folder / name)
        if not files:
            raise ToolkitError(
                f"class folder {folder / name} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...); an empty "
                "class folder would still count as a class: add its images or remove the folder"
            )
        paths += files
        labels += [class_to_idx[name]] * len(files)
    return paths, labels, sorted(class_to_idx, key=class_to_idx.get)
