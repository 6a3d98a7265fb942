"""ragqa: offline-first dermatology question answering with retrieval and LoRA/QLoRA adapters."""

import logging
import warnings

__version__ = "0.1.0"

# Lines the libraries print on every run although nothing is wrong and a user can do nothing about them.
# They are filtered here, once, before any command imports the libraries (peft and sentence-transformers are
# imported from many places), by their exact text and origin: every other warning still shows.
#
# bitsandbytes (imported by peft and sentence-transformers) tries, on CPUs with AVX512-BF16, to fetch a faster
# 4-bit CPU kernel from the Hugging Face hub through the `kernels` package, and logs "Failed to load CPU
# gemm_4bit_forward from kernels-community ..." when it cannot. ragqa runs offline, so installing `kernels`
# would only trade this for a network error; bitsandbytes then uses its own CPU kernel, as intended.
_BNB_KERNEL_NOTE = "Failed to load CPU gemm_4bit_forward from kernels-community"
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not str(record.msg).startswith(_BNB_KERNEL_NOTE))
# Where `kernels` is installed (other packages pull it in), the same fetch first logs that, offline, it skips the
# kernel's publisher check: the same nothing, from the same attempt.
_KERNELS_OFFLINE_NOTE = "Skipping publisher trust check for 'kernels-community/"
logging.getLogger("kernels._internals.hf_hub").addFilter(
    lambda record: not str(record.msg).startswith(_KERNELS_OFFLINE_NOTE))
# peft's PeftModel.__init__ reads `model.is_gradient_checkpointing`, which transformers 5 deprecated for
# `is_activation_checkpointing`: a FutureWarning on every adapter load that only peft can fix (ragqa's own code
# never reads the attribute).
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                        module=r"transformers\.modeling_utils")
