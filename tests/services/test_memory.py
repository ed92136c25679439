"""The malloc settings every ``dermatriage`` process applies: counted in page faults, not time."""

import subprocess
import sys

import pytest
# Forward passes of the served backbone in batches of 4 between image augmentations, as the
# build's extraction runs them; prints the minor page faults of the measured passes.
WORKLOAD = """
import resource, sys
import numpy as np, torch
if sys.argv[1] == "retain":
    from services.memory import retain_freed_memory
    assert retain_freed_memory()
from PIL import Image
from services.modelling.recipe import RealTrainConfig
from services.modelling.views import augment
from services.diagnosis.network import BCCPatternNet
torch.set_num_threads(1)
model = BCCPatternNet(RealTrainConfig().architecture()).eval()
img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
x = torch.rand(4, 3, 224, 224).contiguous(memory_format=torch.channels_last)
def step(i):
    with torch.inference_mode():
        model.embed(x)
    for j in range(4):
        augment(img, np.random.default_rng(i * 4 + j))
for i in range(3):
    step(i)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(3, 9):
    step(i)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_forward_passes_reuse_freed_memory_instead_of_faulting_in_new_pages():
    default, retained = faults("default"), faults("retain")
    # Measured here: ~80,000 faults by default (every pass maps fresh activations), a few
    # hundred with the settings.
    assert default > 20_000, f"glibc's defaults no longer fault ({default}): services/memory.py may go"
    assert retained < default / 10

