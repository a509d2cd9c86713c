"""The annotator's keyboard shortcuts, registered with napari so that it lists and remaps them.

napari 0.9 shows in Preferences > Shortcuts the actions of its ``action_manager``
(it does not read the keybindings of an npe2 manifest: their commands become
app-model actions without keys). So each key is an action named
``napari-sam:<name>``, bound on the viewer; a remap made in the preferences (or
saved in the settings) rebinds it, and :func:`shortcut_text` reads the key bound now
for the dock.

A key bound on the viewer loses to the same key of the selected layer's class
(napari's Image layer binds ``C`` to auto-contrast), so :class:`LayerKeys` also
binds the annotator's keys on every layer of its viewer whose class uses them.
Each action finds the annotator of the viewer it was pressed in through
:func:`register` / :func:`controller_of`.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from napari.components import ViewerModel
from napari.utils.action_manager import action_manager
from napari.utils.interactions import Shortcut
from napari.utils.key_bindings import coerce_keybinding

from napari_sam.engine.errors import InputError

if TYPE_CHECKING:
    from napari_sam._napari.controller import AnnotatorController


@dataclass(frozen=True)
class KeyAction:
    """One annotator shortcut: its action name, default key, description, and what it does."""

    name: str
    default: str
    description: str
    run: Callable[[AnnotatorController], object]
    on_layers: bool = True  # also bound on layers whose class uses the key (False: the layer's own wins)


def _undo(controller: AnnotatorController) -> None:
    if controller.labels_layer is not None:
        controller.labels_layer.undo()


def _redo(controller: AnnotatorController) -> None:
    if controller.labels_layer is not None:
        controller.labels_layer.redo()


def _commit(controller: AnnotatorController) -> object:
    # a propagation shown is what the commit key commits
    from napari_sam._napari.propagation import commit_shown

    return commit_shown(controller)


def _propagate(controller: AnnotatorController) -> None:
    from napari_sam._napari.propagation import propagate

    propagate(controller)


ACTIONS: tuple[KeyAction, ...] = (
    KeyAction("napari-sam:commit", "C", "SAM: commit the preview to the labels", _commit),
    KeyAction("napari-sam:clear_prompts", "Shift-C", "SAM: clear the prompts of this slice", lambda c: c.clear_prompts()),
    KeyAction("napari-sam:next_candidate", "N", "SAM: next candidate mask", lambda c: c.cycle_candidate(1)),
    KeyAction("napari-sam:previous_candidate", "Shift-N", "SAM: previous candidate mask", lambda c: c.cycle_candidate(-1)),
    KeyAction("napari-sam:propagate", "G", "SAM: propagate the object through the slices", _propagate),
    # a selected Labels layer keeps its own undo; elsewhere these undo the annotator's target
    KeyAction("napari-sam:undo", "Control-Z", "SAM: undo in the target labels", _undo, on_layers=False),
    KeyAction("napari-sam:redo", "Control-Shift-Z", "SAM: redo in the target labels", _redo, on_layers=False),
)
ACTION_BY_NAME = {action.name: action for action in ACTIONS}

_controllers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # viewer -> controller


def _unwrapped(viewer):
    """The viewer itself: plugin widgets get a public-only proxy of it, key bindings the viewer."""
    return getattr(viewer, "__wrapped__", viewer)


def register(viewer, controller: AnnotatorController) -> None:
    """Make ``controller`` the annotator that the shortcuts pressed in ``viewer`` act on."""
    register_actions()
    _controllers[_unwrapped(viewer)] = controller


def unregister(viewer, controller: AnnotatorController) -> None:
    """Forget ``controller`` (its widget closed), unless another one took its viewer since."""
    viewer = _unwrapped(viewer)
    if _controllers.get(viewer) is controller:
        del _controllers[viewer]


def controller_of(viewer) -> AnnotatorController | None:
    """The annotator open in ``viewer`` (None when there is none)."""
    return _controllers.get(_unwrapped(viewer))


def run_action(name: str, viewer) -> None:
    """Run the action ``name`` on ``viewer``'s annotator; a user error becomes a status and a warning."""
    controller = controller_of(viewer)
    if controller is None:
        return
    try:
        ACTION_BY_NAME[name].run(controller)
    except InputError as err:
        from napari.utils.notifications import show_warning

        controller._set_status(str(err))
        show_warning(str(err))


def _viewer_command(name: str) -> Callable:
    def command(viewer: ViewerModel) -> None:
        run_action(name, viewer)

    command.__name__ = name.split(":")[1]
    return command


def register_actions() -> None:
    """Register the actions with napari's action manager (once) with their default keys.

    A key the user set in napari's settings for one of them was bound by napari at
    start-up; such an action keeps it instead of the default.
    """
    for action in ACTIONS:
        if action.name in action_manager._actions:
            continue
        action_manager.register_action(action.name, _viewer_command(action.name), action.description, ViewerModel)
        if not action_manager._shortcuts.get(action.name) and not _set_in_settings(action.name):
            action_manager.bind_shortcut(action.name, action.default)


def _set_in_settings(name: str) -> bool:
    with contextlib.suppress(Exception):  # settings unavailable (e.g. a bare ViewerModel in a script)
        from napari.settings import get_settings

        return name in get_settings().shortcuts.shortcuts
    return False


def shortcuts(name: str) -> list[str]:
    """The keys bound to action ``name`` now, in napari's notation (e.g. 'Shift-C')."""
    return [str(key) for key in action_manager._shortcuts.get(name, [])]


def shortcut_text(name: str) -> str:
    """The keys of action ``name`` as the user's platform writes them ('' when it has none)."""
    return " / ".join(Shortcut(key).platform for key in shortcuts(name))


class LayerKeys:
    """Binds the annotator's keys on the layers of ``viewer`` whose class would take them first."""

    def __init__(self, viewer):
        self.viewer = viewer
        self._bound: dict[int, tuple[object, list]] = {}  # id(layer) -> (layer, keys bound on it)
        viewer.layers.events.inserted.connect(self._on_inserted)
        action_manager.events.shortcut_changed.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event) -> None:
        self._bind(event.value)

    def refresh(self, event=None) -> None:
        """Rebind on every layer (after a remap or at start)."""
        self._unbind_all()
        for layer in self.viewer.layers:
            self._bind(layer)

    def _bind(self, layer) -> None:
        class_keys = {key for cls in type(layer).__mro__ for key in getattr(cls, "class_keymap", {})}
        bound = []
        for action in ACTIONS:
            if not action.on_layers:
                continue
            for key in map(coerce_keybinding, shortcuts(action.name)):
                if key in class_keys and key not in layer.keymap:
                    layer.bind_key(key, self._layer_command(action.name), overwrite=True)
                    bound.append(key)
        if bound:
            self._bound[id(layer)] = (layer, bound)

    def _layer_command(self, name: str) -> Callable:
        viewer = self.viewer

        def command(_layer) -> None:
            run_action(name, viewer)

        return command

    def _unbind_all(self) -> None:
        for layer, keys in self._bound.values():
            for key in keys:
                layer.keymap.pop(key, None)
        self._bound.clear()

    def close(self) -> None:
        """Remove the layer bindings and stop following the viewer."""
        self._unbind_all()
        with contextlib.suppress(TypeError, ValueError):
            self.viewer.layers.events.inserted.disconnect(self._on_inserted)
        with contextlib.suppress(TypeError, ValueError):
            action_manager.events.shortcut_changed.disconnect(self.refresh)
