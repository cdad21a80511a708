"""The contract every separation model of demucs_rr fulfils, as types.

The separation engine relies on nothing else: a model maps a mixture (B, C, T) to stems
(B, S, C, T') and exposes the metadata below. Models whose output is shorter than their input
(Demucs) report through ``valid_length`` how long an input must be so that the output covers
``length`` samples once centre-trimmed (:func:`center_trim`); the engine pads centred with real
neighbouring audio.

What differs between models is said through the contract, never by the engine testing classes:

- ``max_segment_length``: the longest chunk the model accepts (a transformer trained on a fixed
  length), ``None`` when unlimited; the engine refuses longer segments and unsplit passes.
- ``chunk_input_length(length, segment)``: how much audio carries a chunk of ``length`` samples
  cut on a grid of ``segment``-sample chunks. Usually ``valid_length(length)`` (Demucs: its
  receptive field; HDemucs: the chunk itself); HTDemucs takes the whole segment of real context
  and pads the rest to its training length itself.
- ``weighted_members()``: the sub-models of an ensemble (a bag of models,
  :mod:`demucs_rr.models.bag`) with their per-source weights; the engine applies each one with
  its own chunking and shifts and averages per source. Empty for a model that separates alone.
- ``bf16_weights``: whether the model may run from bf16-stored weights under bf16 autocast on
  the CPU (every layer has a bf16 path; what must stay float32 casts its input itself).
- ``chunking``: how the engine cuts a track into chunks and blends them back, as a value the
  engine interprets (never a class test): :class:`CentredChunks` (Demucs: centred triangle
  grid) or :class:`FadedChunks` (MSST's ``demix``: fixed chunks, linear fades, reflect padding).
- ``normalization``: what is done to the mixture around the model (:class:`Normalization`:
  Demucs' whole-track normalisation, MSST's ``normalize_audio`` or nothing).

Models that can change their stem set (fine-tuning to other stems) say which weights belong
to which stem: ``stem_layout()`` returns a :class:`StemLayout` (:class:`StemDeclaring`). The
declaration is optional; a model without it can be fine-tuned on its own stems only.

Two structural types (``typing.Protocol``) describe it:

- :class:`SeparationModel`: what separation needs (engine, streaming, validation);
- :class:`PackagedModel`: what a release package needs on top (constructor kwargs and weights),
  which is what every registered model class (:mod:`demucs_rr.models.registry`) provides.

Any ``torch.nn.Module`` subclass that sets the metadata attributes in its constructor and
defines the methods (and ``init_kwargs``) fulfils them; no base class is needed.
:class:`SingleModelDefaults` provides the usual answers of a model that separates by itself.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from demucs_rr.errors import ConfigError

__all__ = [
    "CentredChunks",
    "ChunkingRule",
    "FadedChunkingDefaults",
    "FadedChunks",
    "Normalization",
    "PackagedModel",
    "SeparationModel",
    "SingleModelDefaults",
    "StemDeclaring",
    "StemLayout",
    "WeightedMember",
    "as_module",
    "check_num_overlap",
    "collect_kwargs",
    "center_trim",
    "stem_blocks",
]

_Model = TypeVar("_Model", bound="SeparationModel")


@dataclass(frozen=True)
class CentredChunks:
    """Demucs' chunking: a grid of ``segment``-sample chunks ``int((1 - overlap) * segment)``
    apart, each centred in ``chunk_input_length`` samples of real context, blended with
    triangular weights.

    Attributes:
        overlap: the default overlap between neighbouring chunks, in [0, 1).
    """

    overlap: float = 0.25


@dataclass(frozen=True)
class FadedChunks:
    """MSST's ``demix`` chunking (``utils/model_utils.py``), for chunk size L = the segment:

    - step ``L // num_overlap``, border ``L - step``; a track of N > 2 * border samples is
      reflect-padded by ``border`` on both ends (else not padded);
    - chunks start every step from the start of the padded track; a chunk running past its end
      is padded to L (reflecting itself when it holds more than ``L // 2`` samples, zeros
      otherwise); the model always sees L samples;
    - each output is weighted by a window of ones with linear fades of ``L // 10`` samples
      (``linspace(0, 1)`` in, ``linspace(1, 0)`` out), no fade-in on the first chunk and no
      fade-out on the last; the sum of weighted outputs is divided by the sum of windows.

    Attributes:
        num_overlap: chunks covering each sample (MSST's ``inference.num_overlap``), >= 1.
    """

    num_overlap: int = 4

    def __post_init__(self) -> None:
        if isinstance(self.num_overlap, bool) or self.num_overlap < 1:
            raise ValueError(f"num_overlap must be a positive integer, got {self.num_overlap}")

    @property
    def overlap(self) -> float:
        """The same default as an overlap fraction: ``1 - 1 / num_overlap``."""
        return 1 - 1 / self.num_overlap


ChunkingRule = CentredChunks | FadedChunks
"""How a model is chunked (see :class:`CentredChunks` and :class:`FadedChunks`)."""


class Normalization(enum.Enum):
    """What is done to the mixture around the model, from whole-track mono statistics.

    - ``TRACK``: Demucs' rule: ``(mix - mean) / (std + 1e-8)`` with the unbiased std of the
      mono (channel-averaged) mix; each stem gets ``stem * std + mean / S`` back.
    - ``MSST``: MSST's ``normalize_audio``: ``(mix - mean) / std`` with the population std of
      the mono mix (a silent track is left unscaled); each stem gets ``stem * std + mean``.
    - ``NONE``: the model sees the mixture as it is.
    """

    TRACK = "track"
    MSST = "msst"
    NONE = "none"


@runtime_checkable
class SeparationModel(Protocol):
    """Structural type of a separation model (in practice a ``torch.nn.Module``).

    Attributes:
        sources: stem names, in output order (S of them).
        samplerate: sample rate the model works at, in Hz.
        audio_channels: number of audio channels C the model takes and returns.
        segment_length: default chunk length for split inference, in samples.
        training: whether the module is in training mode.
    """

    sources: list[str]
    samplerate: int
    audio_channels: int
    segment_length: int
    training: bool

    @property
    def bf16_weights(self) -> bool:
        """Whether the model may run from bf16-stored weights on the CPU (see module doc)."""
        ...

    @property
    def max_segment_length(self) -> int | None:
        """Longest chunk (and unsplit track) the model accepts, in samples; None: no limit."""
        ...

    @property
    def chunking(self) -> ChunkingRule:
        """How the engine chunks this model (see module doc)."""
        ...

    @property
    def normalization(self) -> Normalization:
        """What the engine does to the mixture around this model (see module doc)."""
        ...

    def valid_length(self, length: int) -> int:
        """Smallest input length >= ``length`` whose output covers ``length`` samples."""
        ...

    def chunk_input_length(self, length: int, segment: int) -> int:
        """Input length for a chunk of ``length`` samples cut on a ``segment``-sample grid.

        The chunk sits centred in that input with real neighbouring audio around it (zeros
        beyond the track); the output is centre-trimmed back to ``length``.
        """
        ...

    def weighted_members(self) -> Sequence[WeightedMember]:
        """Sub-models applied one by one and averaged per source; empty for a single model."""
        ...

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate (B, C, T) into (B, S, C, T'), T' <= T, centred on the input."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The trainable parameters (their device is where the model runs)."""
        ...

    def eval(self: _Model) -> _Model:
        """Switch to inference mode; returns the model itself."""
        ...

    def train(self: _Model, mode: bool = True) -> _Model:
        """Switch training mode on or off; returns the model itself."""
        ...

    def to(self: _Model, device: torch.device | str | None = None) -> _Model:
        """Move the weights to ``device``; returns the model itself."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Name -> tensor of every parameter and persistent buffer."""
        ...


WeightedMember = tuple[SeparationModel, Sequence[float]]
"""A member of an ensemble and its weight for each source (S values)."""


class SingleModelDefaults:
    """Mixin: the contract answers of a model that separates by itself.

    No segment limit, chunks carried by ``valid_length(length)`` samples, no members, float32
    weights, Demucs' centred chunks and whole-track normalisation. Classes override what
    differs (HTDemucs: its training length as the maximum and the segment as context; bf16
    weights).
    """

    bf16_weights: bool = False

    @property
    def chunking(self) -> ChunkingRule:
        """Demucs' centred triangle grid, 25 % overlap by default."""
        return CentredChunks()

    @property
    def normalization(self) -> Normalization:
        """Demucs' whole-track normalisation."""
        return Normalization.TRACK

    @property
    def max_segment_length(self) -> int | None:
        """No limit on the chunk length."""
        return None

    def chunk_input_length(self: SeparationModel, length: int, segment: int) -> int:
        """``valid_length(length)``: the receptive field, whatever the chunk grid."""
        return self.valid_length(length)

    def weighted_members(self) -> Sequence[WeightedMember]:
        """A single model has no members."""
        return ()


def collect_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """Constructor ``locals()`` -> JSON-able ``init_kwargs`` (tuples become lists)."""
    skip = {"self", "__class__"}
    return {
        key: list(value) if isinstance(value, (tuple, list)) else value
        for key, value in values.items()
        if key not in skip
    }


def check_num_overlap(value: Any) -> None:
    """Raise ConfigError unless ``value`` (MSST's ``inference.num_overlap``) is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"inference.num_overlap must be a positive integer, got {value!r}")


class FadedChunkingDefaults(SingleModelDefaults):
    """Mixin: a model chunked and normalised as MSST does (the band-split families).

    The class sets ``num_overlap`` (int) and ``normalize`` (bool, MSST's
    ``inference.normalize``) from its constructor arguments.
    """

    num_overlap: int
    normalize: bool

    def _init_chunking(self, kwargs: dict[str, Any]) -> None:
        """The contract attributes of an MSST-style model from its constructor arguments
        (``kwargs`` as :func:`collect_kwargs` gives them): ``init_kwargs``, ``sources``,
        ``samplerate``, ``segment_length``, ``num_overlap`` and ``normalize``."""
        check_num_overlap(kwargs["num_overlap"])
        self.init_kwargs: dict[str, Any] = kwargs
        self.sources: list[str] = list(kwargs["sources"])
        self.samplerate: int = kwargs["samplerate"]
        self.segment_length: int = kwargs["segment_length"]
        self.num_overlap = kwargs["num_overlap"]
        self.normalize = bool(kwargs["normalize"])

    @property
    def chunking(self) -> ChunkingRule:
        """MSST's faded chunks with ``num_overlap``."""
        return FadedChunks(self.num_overlap)

    @property
    def normalization(self) -> Normalization:
        """MSST's ``normalize_audio`` when ``normalize``, else none."""
        return Normalization.MSST if self.normalize else Normalization.NONE


@runtime_checkable
class PackagedModel(SeparationModel, Protocol):
    """A separation model that a release package can store and rebuild.

    A package keeps the registry name of ``type(model)``, ``init_kwargs`` and the state dict;
    loading calls ``cls(**init_kwargs)`` and strict-loads the state (``load_state_dict``).

    Attributes:
        init_kwargs: every constructor argument as JSON-able values.
    """

    init_kwargs: dict[str, Any]

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Copy ``state_dict`` into the model's parameters and buffers."""
        ...


@dataclass(frozen=True)
class StemLayout:
    """Which weights of a network belong to which stem (in practice its output layers).

    Stem ``s`` is the ``s``-th entry of the model's ``sources``; with S stems:

    Attributes:
        blocks: parameter name -> ``(dim, block)``: dimension ``dim`` of that parameter holds
            ``S * block`` entries, stem-major, stem ``s`` owning ``[s * block, (s + 1) * block)``
            (Demucs: the channels ``s * C + c`` of its last transposed convolution).
        modules: prefixes of module lists with one entry per stem: every parameter named
            ``{prefix}.{s}.<rest>`` belongs to stem ``s`` (per-stem mask estimators).

    Every other parameter is shared by all stems and has the same shape whatever S is.
    """

    blocks: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    modules: tuple[str, ...] = ()

    def stem_of(self, name: str) -> int | None:
        """The stem that parameter ``name`` of a :attr:`modules` list belongs to, else None."""
        for prefix in self.modules:
            head, _, rest = name.removeprefix(prefix + ".").partition(".")
            if name.startswith(prefix + ".") and head.isdigit() and rest:
                return int(head)
        return None


@runtime_checkable
class StemDeclaring(Protocol):
    """A model that declares its per-stem weights (see :class:`StemLayout`)."""

    def stem_layout(self) -> StemLayout:
        """The per-stem weights of this model, for its current ``sources``."""
        ...


def stem_blocks(
    model: nn.Module, module: nn.Module, dims: Mapping[str, int], sources: int
) -> dict[str, tuple[int, int]]:
    """:attr:`StemLayout.blocks` entries for the parameters of ``module``, a submodule of
    ``model``, whose last name part is a key of ``dims`` (e.g. ``{"weight": 1, "bias": 0}`` for
    a transposed convolution producing ``S * C`` channels).

    Raises:
        ValueError: ``module`` is not part of ``model``, or a size is not a multiple of
            ``sources``.
    """
    prefix = next((name for name, sub in model.named_modules() if sub is module), None)
    if prefix is None:
        raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")
    found: dict[str, tuple[int, int]] = {}
    for name, param in module.named_parameters():
        dim = dims.get(name.rpartition(".")[2])
        if dim is None:
            continue
        size = param.shape[dim]
        if size % sources:
            raise ValueError(f"{prefix}.{name}: {size} rows are not {sources} stem blocks")
        found[f"{prefix}.{name}" if prefix else name] = (dim, size // sources)
    return found


def as_module(model: SeparationModel) -> nn.Module:
    """The ``torch.nn.Module`` behind ``model``, for what needs a real module (DDP, hooks).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module model, got a {type(model).__name__}")
    return model


def center_trim(tensor: torch.Tensor, reference: int | torch.Tensor) -> torch.Tensor:
    """Trim the last dimension of ``tensor`` to ``reference`` samples, centred.

    ``reference`` is a length or a tensor whose last dimension gives it. With ``delta`` extra
    samples, ``delta // 2`` are cut on the left and the rest (the odd one) on the right: the
    alignment of a model output with its input.

    Args:
        tensor: (..., T) tensor with T >= the reference length.
        reference: target length L, or a tensor of shape (..., L).

    Returns:
        (..., L) view of ``tensor`` (``tensor`` itself when T == L).

    Raises:
        ValueError: if ``tensor`` is shorter than the reference length.
    """
    length = reference.size(-1) if isinstance(reference, torch.Tensor) else int(reference)
    delta = tensor.size(-1) - length
    if delta < 0:
        raise ValueError(
            f"center_trim: tensor of length {tensor.size(-1)} is shorter than the target "
            f"length {length}"
        )
    if delta:
        tensor = tensor[..., delta // 2 : delta // 2 + length]
    return tensor
