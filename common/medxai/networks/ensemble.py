"""Neural ensembles of classifiers or snapshots (DeepCOVIDExplainer, seed 002 sec. II-C, eq. 2).

Two ways to combine the softmax posteriors ``P_m(y = k | x)`` of ``M`` members:

- softmax class posterior averaging (SCPA), eq. 2:
  ``P(y = j | x) = exp(sum_m P_m(j)) / sum_k exp(sum_m P_m(k))``, the softmax of the summed posteriors
  (its arg-max is that of the mean posterior);
- prediction maximisation (PM): every class takes the largest posterior any member gives it,
  ``P(y = j | x) = max_m P_m(j) / sum_k max_m P_m(k)``, so the ensemble predicts the class of its most
  confident member (the paper notes PM is "easily influenced by outliers with high scores").

:class:`PosteriorEnsemble` returns scores whose softmax is that ensemble posterior, so a bundle's usual
post-processing (``Activationsd(softmax=True)``) and metrics apply to an ensemble unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn as nn

from medxai.errors import InputError
from medxai.serialization import load_weights

__all__ = ["ENSEMBLE_MODES", "PosteriorEnsemble", "combine_posteriors", "load_member"]

ENSEMBLE_MODES = ("scpa", "pm")
EnsembleMode = Literal["scpa", "pm"]


def combine_posteriors(posteriors: torch.Tensor, mode: EnsembleMode = "scpa") -> torch.Tensor:
    """Scores whose softmax over classes is the ensemble posterior (eq. 2 for SCPA; PM as above).

    Parameters
    ----------
    posteriors
        Member softmax posteriors (M, B, K), each row summing to 1.
    mode
        ``"scpa"``: returns ``sum_m P_m`` (eq. 2 is its softmax); ``"pm"``: returns ``log max_m P_m``.

    Returns
    -------
    torch.Tensor
        (B, K) scores; ``torch.softmax(scores, dim=1)`` is the ensemble posterior.
    """
    if mode not in ENSEMBLE_MODES:
        raise InputError(f"ensemble mode must be one of {ENSEMBLE_MODES}, got {mode!r}.")
    if posteriors.ndim != 3 or posteriors.shape[0] < 1:
        raise InputError(f"posteriors must be (members, batch, classes), got shape {tuple(posteriors.shape)}.")
    if mode == "scpa":
        return posteriors.sum(dim=0)
    return torch.log(posteriors.amax(dim=0).clamp_min(torch.finfo(posteriors.dtype).tiny))


def load_member(network: nn.Module, checkpoint: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Load a plain state dict (``weights_only=True``) into ``network``; errors name the file.

    A checkpoint saved as ``{"model": state_dict}`` (MONAI ``CheckpointSaver`` with several objects) is
    unwrapped.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(f"ensemble member checkpoint {path} does not exist.")
    state = load_weights(path, map_location=device, what="ensemble member checkpoint")
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(
            f"ensemble member checkpoint {path} does not fit {type(network).__name__}: {str(error)[:300]}"
        ) from error
    return network


class PosteriorEnsemble(nn.Module):
    """An ensemble of classifiers (snapshots of one run, or different networks) as one network.

    Parameters
    ----------
    members
        Classifiers mapping (B, C, H, W) to logits (B, K), all with the same K.
    mode
        ``"scpa"`` (softmax class posterior averaging, eq. 2; default, the better of the two in the paper's
        Table II) or ``"pm"`` (prediction maximisation).
    names
        A name per member (e.g. the checkpoint file), recorded in :attr:`names`.

    Shapes
    ------
    Input (B, C, H, W); output (B, K) scores whose softmax is the ensemble posterior. Members run in
    whatever mode the ensemble is in; use it in ``eval`` mode.

    Examples
    --------
    >>> a, b = nn.Linear(2, 3), nn.Linear(2, 3)
    >>> ensemble = PosteriorEnsemble([a, b], mode="scpa")
    >>> x = torch.randn(4, 2)
    >>> torch.allclose(ensemble(x), a(x).softmax(1) + b(x).softmax(1))
    True
    """

    def __init__(
        self, members: Sequence[nn.Module], mode: EnsembleMode = "scpa", names: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        if len(members) < 1:
            raise InputError("PosteriorEnsemble needs at least one member.")
        if mode not in ENSEMBLE_MODES:
            raise InputError(f"ensemble mode must be one of {ENSEMBLE_MODES}, got {mode!r}.")
        if names is not None and len(names) != len(members):
            raise InputError(f"PosteriorEnsemble: {len(names)} names for {len(members)} members.")
        self.members = nn.ModuleList(members)
        self.mode: EnsembleMode = mode
        self.names = [str(n) for n in names] if names is not None else [f"member{i}" for i in range(len(members))]

    def member_posteriors(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax posteriors of every member, (M, B, K)."""
        logits = [member(x) for member in self.members]
        shapes = {tuple(t.shape) for t in logits}
        if len(shapes) != 1:
            raise InputError(f"ensemble members disagree on the output shape: {sorted(shapes)}.")
        return torch.stack([t.float().softmax(dim=1) for t in logits])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine_posteriors(self.member_posteriors(x), self.mode)

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: Sequence[str | Path],
        build: Callable[[int], nn.Module],
        mode: EnsembleMode = "scpa",
        device: torch.device | str = "cpu",
    ) -> PosteriorEnsemble:
        """Build one network per checkpoint and load its weights (``weights_only=True``).

        Parameters
        ----------
        checkpoints
            State-dict files, one per member (e.g. :func:`medxai.engines.list_snapshots` of one run, or the
            ``model.pt`` of several runs).
        build
            ``build(i)`` returns a fresh, untrained network for member ``i`` (the same architecture for
            snapshots of one run; different ones for an ensemble of networks).
        mode, device
            As for the class; members are moved to ``device`` and put in ``eval`` mode.
        """
        if len(checkpoints) < 1:
            raise InputError("PosteriorEnsemble.from_checkpoints: no checkpoints given.")
        members = [load_member(build(i).to(device), path, device).eval() for i, path in enumerate(checkpoints)]
        return cls(members, mode=mode, names=[Path(p).name for p in checkpoints]).eval()
