"""Numeric precision and memory layout of a run: `--amp` and `--channels-last`, resolved for the device.

On CUDA, `auto` means bf16 autocast and channels_last. On a CPU it follows the processor: where it has
native bf16 matrix instructions (Intel AMX, or AVX512-BF16 on Intel Cooper Lake and later and AMD Zen 4
and later), oneDNN runs bf16 convolutions at about twice the fp32 rate, and NHWC is its native layout. One
ResNet-18 CE training step (Adam, 7 classes), measured on this project's 2-core AMD EPYC (AVX512-BF16, no
AMX), torch 2.14.1:

    112 px, batch 64:   fp32 NCHW 1,396 ms   fp32 NHWC 1,149 ms   bf16 NCHW 741 ms   bf16 NHWC 680 ms (2.05x)
     64 px, batch 32:   fp32 NCHW   269 ms   fp32 NHWC   258 ms   bf16 NCHW 177 ms   bf16 NHWC 164 ms (1.64x)

Without those instructions bf16 is emulated and slower than fp32, so there `auto` keeps fp32 NCHW. The
losses (CE, ELR, L_con) and the ELR targets are computed in fp32 whatever the autocast dtype
(`smec_fast.losses`).

Narrow inputs are excluded, because oneDNN 3.12 (torch 2.14.1) computes some bf16 stride-2 convolutions wrong
(values of 1e35, inf or NaN, varying from call to call); the fp32 ones are right:
- with AVX512-BF16 (its jit_bf16:avx512_core_bf16 backward-weights kernel): the weight gradient of a stride-2
  convolution whose input map is one pixel wide;
- with AMX (its brg_conv_fwd:avx10_1_512_amx forward and brgconv_bwd_w backward-weights kernels): the output of a
  3 x 3 stride-2 convolution whose output map is one pixel wide (input one or two pixels wide, three or more
  high) and its weight gradient for a one-pixel-wide input. Measured on an Intel Xeon with AMX (family 6, model
  167) over ResNet-18's stride-2 convolutions, batches 8-64, both layouts, maps up to 8 x 8: nothing else is
  wrong, and with `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`, which keeps oneDNN off AMX, none of these is.
ResNet-18 halves the width four times before layer4's stride-2 convolution, which therefore sees ceil(w / 16)
pixels of an image (or SMEC piece) w pixels wide: images up to 16 px wide (32 px with AMX) meet these kernels.
There `auto` trains in fp32 and `--amp bf16` is refused (narrowest_bf16_cpu_width).
"""

from __future__ import annotations

import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from smec_fast.errors import ConfigError


# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) that still allow its native bf16 kernels.
_BF16_ISAS = {"ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
              "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2"}


def _onednn_isa_cap() -> str:
    """The instruction set oneDNN is capped to (ONEDNN_MAX_CPU_ISA, or its older name), "ALL" where uncapped."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").strip().upper()


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this processor has native bf16 matrix instructions, as torch reports them, and which.

    A cap on oneDNN's instruction set below them (ONEDNN_MAX_CPU_ISA=AVX2, say, or AVX512_CORE) makes bf16
    emulated, so it counts as no native bf16: with ATEN_CPU_CAPABILITY=avx2 as well, a CPU with AVX512-BF16
    runs the kernels an AVX2-only CPU runs."""
    capability = torch.backends.cpu.get_cpu_capability()
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    found = [name for name, probe in probes if _cpu_flag(probe)]
    cap = _onednn_isa_cap()
    if found and cap not in _BF16_ISAS:
        return False, f"{' and '.join(found)} capped by ONEDNN_MAX_CPU_ISA={cap} (torch CPU capability {capability})"
    if "AMX" in found and not amx_in_use() and len(found) > 1:
        # oneDNN runs its AVX512-BF16 kernels instead, the ones an AMD Zen 4 runs.
        return True, f"{' and '.join(f for f in found if f != 'AMX')} (AMX unused: ONEDNN_MAX_CPU_ISA={cap})"
    if found:
        return True, " and ".join(found)
    return False, f"no AMX or AVX512-BF16 (torch CPU capability {capability})"


def cpu_identity() -> dict:
    """The processor as the precision choice sees it: model name, vendor family and model numbers (from
    /proc/cpuinfo where there is one: "AMD EPYC" is both Zen 3, family 25 model 1, and Zen 4, family 25 model
    17), cores, torch's CPU capability, and whether bf16 is native and through which instructions."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("model name", "cpu family", "model") and key.strip() not in info:
                info[key.strip()] = value.strip()
            if not line.strip() and info:
                break
    except OSError:
        pass
    native, what = cpu_bf16_support()
    return {"model": info.get("model name") or platform.processor() or platform.machine(),
            "family": info.get("cpu family"), "model_number": info.get("model"), "cores": os.cpu_count(),
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native,
            "bf16_instructions": what if native else None, "bf16_detail": what}


def describe_cpu(identity: dict | None = None) -> str:
    """One line: 'AMD EPYC (family 25, model 17), 2 cores, torch capability AVX512, native bf16 (AVX512-BF16)'."""
    cpu = identity or cpu_identity()
    numbers = f" (family {cpu['family']}, model {cpu['model_number']})" if cpu["family"] else ""
    bf16 = f"native bf16 ({cpu['bf16_instructions']})" if cpu["native_bf16"] else f"bf16 emulated: {cpu['bf16_detail']}"
    return f"{cpu['model']}{numbers}, {cpu['cores']} cores, torch capability {cpu['torch_capability']}, {bf16}"


def _cpu_flag(probe: str) -> bool:
    check = getattr(torch.cpu, probe, None)  # private torch.cpu probes; absent in some builds
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


@dataclass(frozen=True)
class Precision:
    """What a run computes in: the autocast dtype ("bf16", "fp16" or "off" for fp32), the memory layout, and
    why they were chosen."""

    amp: str
    channels_last: bool
    reason: str

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def to_dict(self) -> dict:
        return {"amp": self.amp, "channels_last": self.channels_last, "reason": self.reason}

    def describe(self) -> str:
        dtype = "fp32" if self.amp == "off" else f"{self.amp} autocast"
        return f"{dtype}, {'channels_last' if self.channels_last else 'NCHW'} ({self.reason})"


# ResNet-18's stride-2 layers before layer4's stride-2 convolution (conv1, maxpool, layer2, layer3) each map a
# width w to ceil(w / 2): that convolution sees ceil(w / 16) pixels, one for any w <= 16, two for w <= 32.
NARROWEST_BF16_CPU_WIDTH = 17  # AVX512-BF16: its input at least two pixels wide
NARROWEST_BF16_AMX_WIDTH = 33  # AMX: its input at least three pixels wide, so that its output is two


def amx_in_use() -> bool:
    """Whether oneDNN runs bf16 convolutions on AMX here: the processor has AMX tiles and ONEDNN_MAX_CPU_ISA does
    not cap oneDNN below them."""
    if not _cpu_flag("_is_amx_tile_supported"):
        return False
    cap = _onednn_isa_cap()
    return cap == "ALL" or "AMX" in cap


def narrowest_bf16_cpu_width() -> int:
    """The narrowest image (or SMEC piece) in pixels that trains in bf16 on this CPU (module docstring)."""
    return NARROWEST_BF16_AMX_WIDTH if amx_in_use() else NARROWEST_BF16_CPU_WIDTH


def resolve_precision(amp: str, channels_last: str, device: torch.device | str,
                      narrowest_width: int | None = None) -> Precision:
    """`--amp` (auto | bf16 | fp16 | off) and `--channels-last` (auto | on | off) for `device`.

    auto: on CUDA, bf16 and channels_last; on a CPU, bf16 and channels_last where the processor has native
    bf16 matrix instructions (cpu_bf16_support), fp32 NCHW elsewhere. On a CPU, channels_last `auto` follows
    the precision, so `--amp off` alone gives fp32 NCHW. fp16 needs CUDA (its gradient scaler, and CPUs
    have no fast fp16 path). `narrowest_width` is the width in pixels of the narrowest input the network
    trains on (SMEC's pieces); on a CPU, below narrowest_bf16_cpu_width() bf16 is not used (module docstring).
    """
    device = torch.device(device)
    if device.type == "cuda":
        chosen, reason = ("bf16", "CUDA") if amp == "auto" else (amp, f"--amp {amp}")
        layout = channels_last != "off"
    else:
        if amp == "fp16":
            raise ConfigError("--amp fp16 needs a CUDA device; on the CPU use bf16, off or auto")
        narrowest = narrowest_bf16_cpu_width()
        too_narrow = narrowest_width is not None and narrowest_width < narrowest
        if amp == "bf16" and too_narrow:
            amx = (" with AMX (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 keeps oneDNN off AMX, and its bf16 kernels are "
                   f"right from {NARROWEST_BF16_CPU_WIDTH} px)") if narrowest == NARROWEST_BF16_AMX_WIDTH else ""
            raise ConfigError(f"--amp bf16 on the CPU: inputs {narrowest_width} px wide reach a stride-2 "
                              f"convolution so narrow that oneDNN's bf16 kernels get it wrong on this CPU{amx}; use "
                              f"--amp off, or images (or SMEC pieces) at least {narrowest} px wide")
        if amp == "auto":
            native, what = cpu_bf16_support()
            chosen, reason = ("bf16" if native else "off"), f"CPU with {what}"
            if native and too_narrow:
                chosen, reason = "off", (f"CPU with {what}, but {narrowest_width}-px-wide inputs, where oneDNN's "
                                         f"bf16 kernels are wrong here: fp32")
        else:
            chosen, reason = amp, f"--amp {amp}"
        layout = chosen == "bf16" if channels_last == "auto" else channels_last == "on"
    if channels_last != "auto":
        reason += f", --channels-last {channels_last}"
    return Precision(chosen, layout, reason)


def autocast_context(device: torch.device | str, amp: str):
    """Autocast to `amp` ("bf16" or "fp16") on the device's type; no autocast (fp32) for "off"."""
    device = torch.device(device)
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def fp32_region(device_type: str):
    """A block computed in the inputs' own dtypes, outside any autocast: the losses, which promote to fp32."""
    return torch.autocast(device_type, enabled=False)


__all__ = ["Precision", "amx_in_use", "autocast_context", "cpu_bf16_support", "cpu_identity", "describe_cpu", "fp32_region",
           "narrowest_bf16_cpu_width", "resolve_precision"]
