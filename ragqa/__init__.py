"""ragqa: offline-first dermatology question answering with retrieval and LoRA/QLoRA adapters."""

import logging
import os
import warnings

__version__ = "0.1.0"

# Lines the libraries print on every run although nothing is wrong and a user can do nothing about them.
# They are filtered here, once, before any command imports the libraries (peft and sentence-transformers are
# imported from many places), by their exact text and origin: every other warning still shows.
#
# bitsandbytes (imported by peft and sentence-transformers) tries, on CPUs with AVX512-BF16, to fetch a faster
# 4-bit CPU kernel from the Hugging Face hub through the `kernels` package, and logs "Failed to load CPU
# gemm_4bit_forward from kernels-community ..." when it cannot; bitsandbytes then uses its own CPU kernel, as
# ragqa intends (below).
_BNB_KERNEL_NOTE = "Failed to load CPU gemm_4bit_forward from kernels-community"
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not str(record.msg).startswith(_BNB_KERNEL_NOTE))
# transformers 5.2x requires `kernels`, so that fetch is real: on AVX512-BF16 CPUs, importing bitsandbytes
# downloads and loads a compiled kernel from the hub (or, offline, tries to and logs about it). ragqa runs no code
# from the hub: `kernels`' own override (LOCAL_KERNELS, repo=path) points that one repository at no path, so the
# fetch fails at once, locally, and bitsandbytes keeps its CPU kernel. A user's own overrides are kept.
_BNB_KERNEL_REPO = "kernels-community/quantization-bitsandbytes"
if _BNB_KERNEL_REPO not in os.environ.get("LOCAL_KERNELS", ""):
    os.environ["LOCAL_KERNELS"] = ":".join(
        filter(None, [os.environ.get("LOCAL_KERNELS"), f"{_BNB_KERNEL_REPO}={os.devnull}"]))
# peft's PeftModel.__init__ reads `model.is_gradient_checkpointing`, which transformers 5 deprecated for
# `is_activation_checkpointing`: a FutureWarning on every adapter load that only peft can fix (ragqa's own code
# never reads the attribute).
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                        module=r"transformers\.modeling_utils")
