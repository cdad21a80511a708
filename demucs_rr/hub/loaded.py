"""What every model source gives: the loaded member networks of a model, before assembly.

A model file or name holds one network (``htdemucs``: one HT Demucs) or several averaged per
source (``htdemucs_ft``: four, with per-source weights). :class:`LoadedModel` keeps them apart,
so that the same result can be run (:meth:`LoadedModel.build`), converted into a package, or
used as the starting point of a fine-tuning run (one member).
"""

from __future__ import annotations

from dataclasses import dataclass

from demucs_rr.errors import ConfigError, PackageFormatError
from demucs_rr.models.bag import BagOfModels, check_member_stems
from demucs_rr.models.base import PackagedModel, SeparationModel

__all__ = ["LoadedModel"]


@dataclass
class LoadedModel:
    """The member networks of a model with their per-source weights and segment.

    Attributes:
        name: the model's name (file stem, package name or released name).
        members: one network per entry (a repeated signature is the same object).
        signatures: a name per entry (official signature, or the model name).
        weights: per member, one weight per source; None: all 1.
        segment: chunk length in seconds for every member; None: their own.
    """

    name: str
    members: list[PackagedModel]
    signatures: list[str]
    weights: list[list[float]] | None = None
    segment: float | None = None

    @classmethod
    def single(cls, model: PackagedModel, name: str) -> LoadedModel:
        """A model of one network, ``model``."""
        return cls(name, [model], [name])

    @property
    def is_single(self) -> bool:
        """One network, no weights, no segment: :meth:`build` gives the network itself."""
        return len(self.members) == 1 and self.weights is None and self.segment is None

    def check(self) -> None:
        """Members agree on rate and channels, share stems with the first member (a member
        with other stems gives weight 0 to those it lacks, :mod:`demucs_rr.models.bag`);
        weights fit them.

        Raises:
            PackageFormatError: naming the model and the first disagreement.
        """
        first = self.members[0]
        for sig, model in zip(self.signatures, self.members, strict=True):
            if not set(model.sources) & set(first.sources):
                raise PackageFormatError(
                    f"bag {self.name}: member {sig} has stems {', '.join(model.sources)}, none "
                    f"of the first member's ({', '.join(first.sources)})"
                )
            for attr in ("samplerate", "audio_channels"):
                if getattr(model, attr) != getattr(first, attr):
                    raise PackageFormatError(
                        f"bag {self.name}: member {sig} has {attr} {getattr(model, attr)}, "
                        f"the first member {getattr(first, attr)}"
                    )
        if self.weights is not None and any(len(w) != len(first.sources) for w in self.weights):
            raise PackageFormatError(
                f"bag {self.name}: every weight list needs {len(first.sources)} values, one per "
                f"source ({', '.join(first.sources)})"
            )
        try:
            check_member_stems(first.sources, [m.sources for m in self.members], self.weights)
        except ConfigError as exc:
            raise PackageFormatError(f"bag {self.name}: {exc}") from None

    def build(self) -> SeparationModel:
        """The model to run (eval mode): the network itself when :attr:`is_single`, else a
        :class:`~demucs_rr.models.bag.BagOfModels` of the members."""
        self.check()
        if self.is_single:
            return self.members[0].eval()
        return BagOfModels(self.members, weights=self.weights, segment=self.segment).eval()
