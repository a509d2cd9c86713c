"""Choosing and loading a SAM model in the dock widgets: one picker, each model loaded once per viewer.

The annotator and Segment everything both show a :class:`ModelPicker`: a zoo model
or a local checkpoint file, and a device. :meth:`ModelPicker.request` hands the
chosen model to a callback, at once when it is loaded already (by this picker or by
the other widget of the same viewer), else after loading it in a napari thread
worker that :meth:`ModelPicker.cancel` abandons. A model is loaded again only when
the choice, the device or the checkpoint file (its size or time) changes. Loading
errors arrive through the worker's ``errored`` signal: a user's mistake (a bad file,
a failed download) becomes a napari notification, anything else is raised.
"""

from __future__ import annotations

import html
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui import widgets
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from psygnal import Signal

from napari_sam._napari.workers import guarded, original_error
from napari_sam._napari.wrapping import WrappingLabel
from napari_sam.engine.errors import InputError
from napari_sam.model.errors import CheckpointError, DownloadError

if TYPE_CHECKING:
    import torch

LOCAL_FILE = "Local checkpoint file..."
DEFAULT_MODEL = "vit_t"
DEVICES = ("auto", "cpu", "cuda", "mps")
# Errors with a message written for the user: shown as a notification, not a traceback.
USER_ERRORS = (InputError, CheckpointError, DownloadError, FileNotFoundError)


def model_choices() -> list[str]:
    """The zoo's model names, then the local-file choice."""
    from napari_sam.model import zoo

    return [*zoo.list_models(), LOCAL_FILE]


def describe_model(name: str) -> str:
    """One sentence on a model choice: what it is and whether it still has to be downloaded."""
    from napari_sam.model import zoo

    if name not in zoo.REGISTRY:
        return "Pick a SAM checkpoint file (.pth / .pt); the architecture is detected from its tensors."
    entry = zoo.get_entry(name)
    where = "downloaded" if zoo.is_cached(name) else "downloaded on first use"
    return f"{entry.description} ({where})."


@dataclass(frozen=True)
class ModelKey:
    """What names a loaded model: its source, the device choice and, for a file, (size, mtime_ns).

    The file's stamp makes a checkpoint replaced at the same path load again.
    """

    source: str  # a zoo name or a checkpoint file's absolute path
    device: str = "auto"  # one of DEVICES
    file_stamp: tuple[int, int] | None = None
    decoder: str | None = None  # an instance decoder file's absolute path, attached to a checkpoint file
    decoder_stamp: tuple[int, int] | None = None

    @property
    def torch_device(self) -> str | None:
        """The device for ``load_model`` and the engine: None lets them pick the best one."""
        return None if self.device == "auto" else self.device

    @property
    def name(self) -> str:
        return Path(self.source).name + (f" + {Path(self.decoder).name}" if self.decoder else "")


@dataclass(frozen=True)
class LoadedModel:
    """A SAM ``torch.nn.Module`` (eval mode, on the key's device) and the key it was loaded for."""

    key: ModelKey
    model: torch.nn.Module


# viewer -> {ModelKey: model}; both levels weak: a closed viewer, or a model no widget uses, is freed.
_VIEWER_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def viewer_models(viewer) -> weakref.WeakValueDictionary:
    """The models loaded by ``viewer``'s widgets, by :class:`ModelKey` (kept while a widget uses them).

    Parameters
    ----------
    viewer
        A napari viewer, or the public-only proxy of one that plugin widgets receive.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)  # plugin widgets get a proxy: key on the viewer itself
    models = _VIEWER_MODELS.get(viewer)
    if models is None:
        models = _VIEWER_MODELS[viewer] = weakref.WeakValueDictionary()
    return models


def load_job(key: ModelKey) -> torch.nn.Module:
    """Load ``key``'s model (in a worker thread).

    A plain function, not a generator: superqt's generator workers drop a
    RuntimeError (DownloadError is one) instead of emitting ``errored``.
    """
    import napari_sam.model  # looked up at call time, so the one load function can be counted in tests
    from napari_sam.engine.predict.device import select_device

    device = select_device(key.torch_device)  # a device this machine lacks is an InputError, said before loading
    return napari_sam.model.load_model(key.source, device=device, progress=False, decoder=key.decoder)


def _stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns): a file replaced at the same path is another model."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class ModelPicker:
    """The model, checkpoint-file and device choices of a dock widget, and the model loaded for them.

    The owner lays out :attr:`widgets` (a form) and the :attr:`info` and :attr:`status`
    labels, and calls :meth:`request` when it needs the model. ``busy_changed(bool)``
    tells it when a load starts and ends, to enable its buttons.
    """

    busy_changed = Signal(bool)

    def __init__(self, viewer, file_label: str = "File", decoder: bool = False):
        self.viewer = viewer
        self.loaded: LoadedModel | None = None
        self._worker = None
        self._on_ready: Callable[[LoadedModel], None] | None = None
        self.model_choice = widgets.ComboBox(
            label="Model", choices=model_choices(), value=DEFAULT_MODEL, tooltip="A zoo model, or a checkpoint file"
        )
        self.model_file = widgets.FileEdit(
            label=file_label,
            mode="r",
            filter="*.pth *.pt",
            visible=False,
            tooltip="A SAM checkpoint file (.pth / .pt): official, MobileSAM, or fine-tuned with napari-sam",
        )
        # an optional instance decoder for a checkpoint file (micro-sam publishes model and decoder as two files);
        # only widgets that segment without prompts offer it
        self.decoder_file = widgets.FileEdit(
            label="Decoder",
            mode="r",
            filter="*.pth *.pt",
            visible=False,
            tooltip="Optional: an instance decoder file for this checkpoint (micro-sam's vit_*_decoder.pt); "
                    "leave empty to use the checkpoint's own decoder, if any",
        )
        self._offers_decoder = decoder
        self.device_choice = widgets.ComboBox(
            label="Device", choices=DEVICES, value="auto", tooltip="auto: a CUDA GPU, else Apple MPS, else the CPU"
        )
        self.info = WrappingLabel(describe_model(DEFAULT_MODEL))
        self.status = WrappingLabel("No model loaded.", rich=True)  # the annotator names the model in bold
        self.model_choice.changed.connect(self._on_model_choice)
        self._follow_viewer()

    def _follow_viewer(self) -> None:
        """Start on the model another widget of this viewer loaded last (not the zoo default):
        a user who loaded a checkpoint in the annotator expects Segment everything to use it."""
        keys = list(viewer_models(self.viewer).keys())
        if keys:
            self.choose(keys[-1].source)
            self.device_choice.value = keys[-1].device
            if keys[-1].decoder and self._offers_decoder:
                self.decoder_file.value = keys[-1].decoder

    def _say(self, text: str) -> None:
        """Show plain ``text`` in the (rich-text) status label."""
        self.status.setText(html.escape(text, quote=False))

    @property
    def widgets(self) -> list[widgets.Widget]:
        """The form fields: model, checkpoint file and (if offered) decoder file, shown for a local file, and device."""
        files = [self.model_file, self.decoder_file] if self._offers_decoder else [self.model_file]
        return [self.model_choice, *files, self.device_choice]

    # ------------------------------------------------------------ choosing
    def choose(self, model: str) -> None:
        """Choose a zoo model by name, or else a checkpoint file by path."""
        if model in self.model_choice.choices:
            self.model_choice.value = model
        else:
            self.model_choice.value = LOCAL_FILE
            self.model_file.value = model

    def key(self) -> ModelKey:
        """The model chosen now; an InputError when the checkpoint file is not chosen or not a file."""
        name = self.model_choice.value
        if name != LOCAL_FILE:
            return ModelKey(name, self.device_choice.value)
        path = Path(str(self.model_file.value)).expanduser()
        if not path.is_file():
            raise InputError(f"Choose a checkpoint file first ({str(path)!r} is not a file).")
        decoder = decoder_stamp = None
        text = self._decoder_text()
        if text:
            decoder_path = Path(text).expanduser()
            if not decoder_path.is_file():
                raise InputError(f"The decoder file {text!r} is not a file; choose one, or clear the Decoder field "
                                 "to load the checkpoint alone.")
            decoder, decoder_stamp = str(decoder_path.resolve()), _stamp(decoder_path)
        return ModelKey(str(path.resolve()), self.device_choice.value, _stamp(path), decoder, decoder_stamp)

    def decoder_chosen(self) -> bool:
        """Whether a decoder file is entered for a checkpoint file (whether or not it exists yet)."""
        return self.model_choice.value == LOCAL_FILE and bool(self._decoder_text())

    def _decoder_text(self) -> str:
        """The Decoder field's text ("" when not offered): its value is the working directory when empty."""
        return self.decoder_file.line_edit.value.strip() if self._offers_decoder else ""

    def _on_model_choice(self, name: str) -> None:
        self.model_file.visible = name == LOCAL_FILE
        self.decoder_file.visible = name == LOCAL_FILE and self._offers_decoder
        text = describe_model(name)
        if name == LOCAL_FILE and self._offers_decoder:
            text += " A decoder file (optional) adds instance mode."
        self.info.setText(text)

    # ------------------------------------------------------------- loading
    def ready(self) -> LoadedModel | None:
        """The chosen model if it is loaded, here or by another widget of the viewer; else None."""
        key = self.key()
        if self.loaded is None or self.loaded.key != key:
            model = viewer_models(self.viewer).get(key)
            if model is None:
                return None
            self._keep(LoadedModel(key, model))
        return self.loaded

    def request(self, on_ready: Callable[[LoadedModel], None]) -> None:
        """Call ``on_ready`` with the chosen model: now if it is loaded, else after a worker has loaded it.

        Parameters
        ----------
        on_ready
            Called on the main thread with the :class:`LoadedModel`. A new request while
            loading replaces the load in progress; a cancelled or failed load calls nothing.

        Raises
        ------
        InputError
            At once, when the choice is not usable (no checkpoint file chosen).
        """
        loaded = self.ready()
        if loaded is not None:
            on_ready(loaded)
            return
        key = self.key()
        self.cancel()
        self._on_ready = on_ready
        self._start(key)

    def is_loading(self) -> bool:
        return self._worker is not None

    def cancel(self) -> bool:
        """Abandon the load in progress: its model is dropped when it arrives. Returns whether one was."""
        worker, self._worker, self._on_ready = self._worker, None, None
        if worker is None:
            return False
        worker.quit()
        self._say("Loading cancelled.")
        self.busy_changed.emit(False)
        return True

    def close(self) -> None:
        """Stop a load in progress and disconnect the owner."""
        self.cancel()
        self.busy_changed.disconnect()

    def _start(self, key: ModelKey) -> None:
        worker = create_worker(
            guarded(load_job),  # any error, a RuntimeError too, reaches `errored`
            key,
            _start_thread=False,
            _connect={"errored": lambda err: self._on_error(worker, err)},  # no re-raise of user errors
            _progress={"desc": f"Loading SAM model {key.name}"},
        )
        worker.returned.connect(lambda model: self._on_loaded(worker, key, model))
        worker.finished.connect(lambda: self._on_finished(worker))
        self._worker = worker
        self._say(f"Loading {key.source}...")
        self.busy_changed.emit(True)
        worker.start()

    def _keep(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        viewer_models(self.viewer)[loaded.key] = loaded.model
        config = getattr(loaded.model, "config", None)
        architecture = f" ({config.name})" if config is not None else ""
        device = next(loaded.model.parameters()).device
        self._say(f"Model {loaded.key.name}{architecture} on {device}.")

    def _on_loaded(self, worker, key: ModelKey, model) -> None:
        if worker is not self._worker:
            return  # cancelled: drop it
        on_ready, self._worker, self._on_ready = self._on_ready, None, None
        self._keep(LoadedModel(key, model))
        self.busy_changed.emit(False)
        if on_ready is not None:
            on_ready(self.loaded)

    def _on_error(self, worker, err: Exception) -> None:
        err = original_error(err)
        current = worker is self._worker
        if current:
            self._worker, self._on_ready = None, None
            self.busy_changed.emit(False)
        if not isinstance(err, USER_ERRORS):
            raise err  # a bug: napari shows the traceback (and a test fails)
        if current:
            self._say(str(err))
            show_error(str(err))

    def _on_finished(self, worker) -> None:
        if worker is self._worker:  # ended without a result or an error
            self._worker, self._on_ready = None, None
            self.busy_changed.emit(False)
