"""Released band-split models (MSST / UVR checkpoints): names, files, configs, published scores.

Each name is one ``.ckpt`` with its MSST config: shipped with demucs_rr (``hub/msst/*.yaml``,
copied from MSST at the commit its parity fixtures come from) or downloaded beside the
checkpoint. Nobody publishes checksums for these files: the sha256 of each is pinned in the cache
folder on its first download and checked on every later load (``models list`` shows it).

Scores are the ones MSST's table of pre-trained models publishes: its global SDR (dB, one value
per track over the whole track, averaged over the tracks), on the MUSDB18 test set for the
MUSDB18-HQ-only models and on MVSEP's Multisong set for the community vocal models.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demucs_rr.hub.fetch import fetch_pinned, pinned_sha256
from demucs_rr.hub.loaded import LoadedModel
from demucs_rr.hub.msst import load_msst
from demucs_rr.runtime import cache_dir

__all__ = ["MSST_RELEASES", "MsstRelease", "load_msst_release", "pin_state"]

_MSST = "https://github.com/ZFTurbo/Music-Source-Separation-Training/releases/download"
_UVR = "https://github.com/TRvlvr/model_repo/releases/download/all_public_uvr_models"


@dataclass(frozen=True)
class MsstRelease:
    """One released band-split model.

    Attributes:
        name: the ``-n`` name.
        family: MSST ``model_type``.
        url: the checkpoint.
        config: a config shipped in ``demucs_rr/hub/msst/`` (file name) or its URL.
        description: one line for ``models list``.
        sdr: the published global SDR in dB (mean over stems for a multi-stem model).
        scored_on: what ``sdr`` was measured on.
        licence: the licence its authors state, or None when none is stated.
        trained_on: what the model was trained on, as published.
    """

    name: str
    family: str
    url: str
    config: str
    description: str
    sdr: float
    scored_on: str
    licence: str | None
    trained_on: str

    @property
    def checkpoint_path(self) -> Path:
        """Where the checkpoint is (or would be) cached."""
        return cache_dir() / "msst" / self.url.rsplit("/", 1)[-1]

    def config_path(self) -> Path | None:
        """The shipped config file, or None when ``config`` is a URL (downloaded)."""
        if "://" in self.config:
            return None
        entry: Any = importlib.resources.files("demucs_rr.hub") / "msst" / self.config
        return Path(str(entry))

    @property
    def cached_config_path(self) -> Path:
        """Where a downloaded config is cached (beside the checkpoint)."""
        return self.checkpoint_path.with_suffix(".yaml")


MSST_RELEASES: dict[str, MsstRelease] = {
    r.name: r
    for r in [
        MsstRelease(
            "bs_roformer_viperx_317", "bs_roformer",
            f"{_UVR}/model_bs_roformer_ep_317_sdr_12.9755.ckpt",
            "viperx_bs_roformer_ep_317.yaml",
            "BS-RoFormer vocals (viperx ep 317), vocals + no_vocals", 10.87,
            "MVSEP Multisong, vocals", None, "not published",
        ),
        MsstRelease(
            "bs_roformer_viperx_937", "bs_roformer",
            f"{_UVR}/model_bs_roformer_ep_937_sdr_10.5309.ckpt",
            "viperx_bs_roformer_ep_937.yaml",
            "BS-RoFormer other (viperx ep 937), other + no_other", 6.85,
            "MVSEP Multisong, other", None, "not published",
        ),
        MsstRelease(
            "mel_band_roformer_viperx_3005", "mel_band_roformer",
            f"{_UVR}/model_mel_band_roformer_ep_3005_sdr_11.4360.ckpt",
            "viperx_mel_band_roformer_ep_3005.yaml",
            "Mel-Band RoFormer vocals (viperx ep 3005), vocals + no_vocals", 9.67,
            "MVSEP Multisong, vocals", None, "not published",
        ),
        MsstRelease(
            "mel_band_roformer_kj_vocals", "mel_band_roformer",
            "https://huggingface.co/KimberleyJSN/melbandroformer/resolve/main/MelBandRoformer.ckpt",
            "kj_mel_band_roformer_vocals.yaml",
            "Mel-Band RoFormer vocals (Kimberley Jensen), vocals + no_vocals", 10.98,
            "MVSEP Multisong, vocals", None, "not published",
        ),
        MsstRelease(
            "bs_roformer_musdb18", "bs_roformer",
            f"{_MSST}/v1.0.12/model_bs_roformer_ep_17_sdr_9.6568.ckpt",
            f"{_MSST}/v1.0.12/config_bs_roformer_384_8_2_485100.yaml",
            "BS-RoFormer 4 stems, MUSDB18-HQ only (MSST)", 9.65,
            "MUSDB18 test, mean of 4 stems", "MIT", "MUSDB18-HQ train",
        ),
        MsstRelease(
            "scnet_musdb18", "scnet",
            f"{_MSST}/v.1.0.6/scnet_checkpoint_musdb18.ckpt",
            "msst_scnet_musdb18.yaml",
            "SCNet small, 4 stems, MUSDB18-HQ only (starrytong)", 9.03,
            "MUSDB18 test, mean of 4 stems", "MIT", "MUSDB18-HQ train",
        ),
        MsstRelease(
            "scnet_large_musdb18", "scnet",
            f"{_MSST}/v1.0.8/model_scnet_sdr_9.3244.ckpt",
            "msst_scnet_large_musdb18.yaml",
            "SCNet large, 4 stems, MUSDB18-HQ only (MSST)", 9.32,
            "MUSDB18 test, mean of 4 stems", "MIT", "MUSDB18-HQ train",
        ),
        MsstRelease(
            "scnet_xl_ihf_musdb18", "scnet",
            f"{_MSST}/v1.0.15/model_scnet_ep_36_sdr_10.0891.ckpt",
            f"{_MSST}/v1.0.15/config_musdb18_scnet_xl_more_wide_v5.yaml",
            "SCNet XL IHF, 4 stems, MUSDB18-HQ only (MSST)", 10.08,
            "MUSDB18 test, mean of 4 stems", "MIT", "MUSDB18-HQ train",
        ),
        MsstRelease(
            "mdx23c_musdb18", "mdx23c",
            f"{_MSST}/v1.0.1/model_mdx23c_ep_168_sdr_7.0207.ckpt",
            "msst_mdx23c_musdb18.yaml",
            "MDX23C 4 stems, MUSDB18-HQ only (MSST)", 7.15,
            "MUSDB18 test, mean of 4 stems", "MIT", "MUSDB18-HQ train",
        ),
        MsstRelease(
            "mdx23c_vocals", "mdx23c",
            f"{_MSST}/v1.0.0/model_vocals_mdx23c_sdr_10.17.ckpt",
            "msst_mdx23c_vocals.yaml",
            "MDX23C vocals + other (MSST)", 10.17,
            "MVSEP Multisong, vocals", "MIT", "not published",
        ),
    ]
}  # fmt: skip
"""Released band-split names, in ``models list`` order."""


def _local(folder: Path | None, name: str) -> Path | None:
    """``folder / name`` when a ``--repo`` folder holds that file (used as it is)."""
    return folder / name if folder is not None and (folder / name).is_file() else None


def load_msst_release(
    release: MsstRelease, member_folder: Path | None = None, progress: bool = True
) -> LoadedModel:
    """Load a released band-split model: its checkpoint (and a config without a shipped copy)
    from ``member_folder`` when it holds the file, else the cache, pinned on first download.

    Raises:
        DownloadError: a download fails, or a cached file no longer matches its pinned sha256.
        PackageFormatError: the files are not a loadable checkpoint and config.
    """
    ckpt_name = release.url.rsplit("/", 1)[-1]
    ckpt = _local(member_folder, ckpt_name) or fetch_pinned(
        release.url, release.checkpoint_path, progress
    )
    config = release.config_path()
    if config is None:
        config = _local(member_folder, release.config.rsplit("/", 1)[-1]) or fetch_pinned(
            release.config, release.cached_config_path, progress
        )
    return LoadedModel.single(load_msst(ckpt, config).members[0], release.name)


def pin_state(release: MsstRelease) -> str:
    """What ``models list`` says of the checkpoint's pinned sha256."""
    pin = pinned_sha256(release.checkpoint_path)
    return f"sha256 pinned {pin[:16]}" if pin else "sha256 pinned on first download"
