"""Multimodal (thick/thin) training of seed 003 sec. 3.3.2: labelled thick slices and unlabelled thin slices.

The objective is ``L(x_t, x_s) = L_S(p_s, y_s) + beta L_T(p_t)`` (eq. 14): a supervised loss ``L_S`` on
labelled thick-slice batches (cross-entropy, eq. 15) and an unsupervised loss ``L_T`` on unlabelled
thin-slice batches (divergence from the uniform distribution, eq. 16-17,
:class:`medxai.losses.UniformDivergenceLoss`), "optimised alternatively for both thick-slice and thin-slice
images". :class:`ThickThinTrainer` is MONAI's :class:`~monai.engines.SupervisedTrainer` whose data loader
gives the thick batches and whose iteration also draws the next thin batch from a second loader, cycled
(restarted when exhausted, with ``set_epoch`` on a distributed sampler), so an epoch is one pass over the
thick slices. Two schedules:

* ``alternate=True`` (the paper): an optimiser step on ``L_S`` of the thick batch, then an optimiser step
  on ``beta L_T`` of the thin batch;
* ``alternate=False``: one step on the sum ``L_S + beta L_T`` (eq. 14 taken literally).

``supervised_weight=0`` skips the thick step (Table 5's "L_T only"), ``unlabeled_weight=0`` skips the thin
batch entirely (Table 5's "L_S only": the thin loader is never read). The output dict holds the thick
batch's ``image``, ``label`` and ``pred`` (so MONAI's handlers work unchanged), ``loss`` (the weighted
total), ``loss_supervised`` (``L_S``) and ``loss_unsupervised`` (``L_T`` before weighting).

The position in the thin loader is part of the trainer's ``state_dict()`` (key ``"unlabeled"``): the number of
passes begun, the batches drawn from the current pass, and the random generators (global ones, the thin
loader's and its transforms') just before the pass's iterator was made and now. ``load_state_dict`` rebuilds
that iterator exactly: it puts back the pass-start generators, makes the iterator, draws and drops the batches
already used, then puts back the thin transforms' and loader's generators of the save (the global ones are
left to :class:`medxai.engines.resume.ResumableTraining`). A resumed run so sees the same thin batches, with
the same random crops and augmentations, as an uninterrupted one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from medxai.engines.resume import RngStates, replay_iterator
from medxai.errors import InputError

__all__ = ["ThickThinTrainer"]


class ThickThinTrainer(SupervisedTrainer):
    """SupervisedTrainer over labelled thick batches plus a cycled loader of unlabelled thin batches (eq. 14).

    Parameters
    ----------
    unlabeled_data_loader
        Iterable of thin-slice batches: dicts with ``image_key`` (B, C, H, W) (any label in them is ignored)
        or tensors.
    unlabeled_loss_function
        ``L_T``: called on the network's logits of a thin batch, returns a scalar.
    unlabeled_weight
        ``beta`` of eq. 14 (seed 003: 1e-2). 0 skips the thin batches.
    supervised_weight
        Weight of ``L_S`` (1 in the paper). 0 skips the thick step (ablation "L_T only").
    alternate
        ``True``: separate optimiser steps on the thick and the thin batch (the paper); ``False``: one step
        on the weighted sum.
    image_key
        Key of the image in a thin batch dict.
    All other arguments are :class:`monai.engines.SupervisedTrainer`'s (``loss_function`` is ``L_S``).
    Gradient accumulation (``accumulation_steps > 1``) is not supported.
    """

    def __init__(
        self,
        *args: Any,
        unlabeled_data_loader: Iterable,
        unlabeled_loss_function: Callable[[torch.Tensor], torch.Tensor],
        unlabeled_weight: float = 1e-2,
        supervised_weight: float = 1.0,
        alternate: bool = True,
        image_key: str = "image",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.accumulation_steps != 1:
            raise InputError(f"ThickThinTrainer does not support accumulation_steps={self.accumulation_steps}.")
        for name, value in (("unlabeled_weight", unlabeled_weight), ("supervised_weight", supervised_weight)):
            if not float(value) >= 0.0:
                raise InputError(f"ThickThinTrainer: {name} must be >= 0, got {value!r}.")
        if float(unlabeled_weight) == 0.0 and float(supervised_weight) == 0.0:
            raise InputError("ThickThinTrainer: supervised_weight and unlabeled_weight are both 0; nothing to train.")
        self.unlabeled_data_loader = unlabeled_data_loader
        self.unlabeled_loss_function = unlabeled_loss_function
        self.unlabeled_weight = float(unlabeled_weight)
        self.supervised_weight = float(supervised_weight)
        self.alternate = bool(alternate)
        self.image_key = image_key
        self._unlabeled_iterator: Iterator | None = None
        self._unlabeled_passes = 0
        self._unlabeled_drawn = 0
        self._unlabeled_rng = RngStates(unlabeled_data_loader)
        self._unlabeled_start: dict[str, Any] | None = None

    def state_dict(self) -> OrderedDict:
        """ignite's trainer state plus ``"unlabeled"``: the position in the thin loader (see the module notes)."""
        state = super().state_dict()
        state["unlabeled"] = {
            "passes": self._unlabeled_passes,
            "drawn": self._unlabeled_drawn if self._unlabeled_iterator is not None else 0,
            "pass_start": self._unlabeled_start if self._unlabeled_iterator is not None else None,
            "current": self._unlabeled_rng.capture(),
        }
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load ignite's trainer state and rebuild the thin loader's iterator at the saved position."""
        state = dict(state_dict)
        unlabeled = state.pop("unlabeled", None)
        super().load_state_dict(state)
        if unlabeled is None:
            return
        self._unlabeled_passes = int(unlabeled["passes"])
        self._unlabeled_iterator, self._unlabeled_drawn, self._unlabeled_start = None, 0, None
        if unlabeled["pass_start"] is not None:
            now = self._unlabeled_rng.capture()
            self._unlabeled_start = unlabeled["pass_start"]
            self._unlabeled_drawn = int(unlabeled["drawn"])
            self._unlabeled_iterator = replay_iterator(
                self._unlabeled_rng, self._unlabeled_start,
                lambda: self._new_unlabeled_iterator(self._unlabeled_passes - 1), self._unlabeled_drawn,
            )  # fmt: skip
            self._unlabeled_rng.restore(now)  # the global generators as they were before this replay
        self._unlabeled_rng.restore(unlabeled["current"], include_global=False)

    def _new_unlabeled_iterator(self, unlabeled_pass: int) -> Iterator:
        sampler = getattr(self.unlabeled_data_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(unlabeled_pass)
        return iter(self.unlabeled_data_loader)

    def _next_unlabeled(self) -> torch.Tensor:
        """The next thin batch's images on the engine's device, restarting the loader when it is exhausted."""
        for attempt in range(2):
            if self._unlabeled_iterator is None:
                self._unlabeled_start = self._unlabeled_rng.capture()
                self._unlabeled_drawn = 0
                self._unlabeled_iterator = self._new_unlabeled_iterator(self._unlabeled_passes)
                self._unlabeled_passes += 1
            try:
                batch = next(self._unlabeled_iterator)
                self._unlabeled_drawn += 1
                break
            except StopIteration:
                self._unlabeled_iterator = None
        else:
            raise InputError("ThickThinTrainer: the unlabeled (thin-slice) data loader yields no batches.")
        images = batch[self.image_key] if isinstance(batch, dict) else batch
        if not isinstance(images, torch.Tensor):
            raise InputError(f"ThickThinTrainer: a thin batch holds {type(images).__name__}, expected a tensor.")
        return images.to(device=self.state.device, non_blocking=self.non_blocking, **self.to_kwargs)

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.amp and self.scaler is not None:
            with torch.autocast("cuda", **self.amp_kwargs):
                return self.inferer(inputs, self.network)
        return self.inferer(inputs, self.network)

    def _step(self, loss: torch.Tensor) -> None:
        if self.amp and self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.optimizer.step()

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = self.prepare_batch(batchdata, self.state.device, self.non_blocking, **self.to_kwargs)
        inputs, targets = batch[0], batch[1]
        if targets is None:
            raise InputError("ThickThinTrainer: a thick (labelled) batch has no 'label'.")
        self.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        self.network.train()
        use_thick = self.supervised_weight > 0
        thin = self._next_unlabeled() if self.unlabeled_weight > 0 else None

        self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with torch.set_grad_enabled(use_thick):  # without L_S the thick batch is only logged
            pred = self._forward(inputs)
            self.state.output[Keys.PRED] = pred
            self.fire_event(IterationEvents.FORWARD_COMPLETED)
            supervised = self.loss_function(pred, targets).mean()
            self.fire_event(IterationEvents.LOSS_COMPLETED)
        weighted_supervised = self.supervised_weight * supervised
        pending = weighted_supervised if use_thick else None  # what the next optimiser step still has to take
        if pending is not None and (self.alternate or thin is None):
            self._step(pending)
            self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
            pending = None
        unsupervised = torch.zeros((), device=supervised.device)
        if thin is not None:
            unsupervised = self.unlabeled_loss_function(self._forward(thin)).mean()
            weighted = self.unlabeled_weight * unsupervised
            self._step(weighted if pending is None else pending + weighted)
        total = weighted_supervised.detach() + self.unlabeled_weight * unsupervised.detach()
        self.state.output[Keys.LOSS] = total.detach()
        self.state.output["loss_supervised"] = supervised.detach()
        self.state.output["loss_unsupervised"] = unsupervised.detach()
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        return self.state.output
