"""On Linux with glibc, a CPU run keeps freed memory for reuse: once a training loop's allocations have
settled, a step that allocates its buffers again does not page-fault their memory in afresh."""
import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = [pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                                 reason="glibc's malloc only"),
              pytest.mark.slow]  # each test measures in fresh interpreters that import torch

# In a child process, so that the malloc settings stay out of the test process. A "step" allocates and
# frees buffers of 100, 200 and 50 MB, as a training step does its activations and gradients.
STEPS = """
import resource, sys, torch
from smolm135.runtime.device import configure_backends
configure_backends(torch.device("cpu"), reuse_freed_memory={reuse})

def page_faults_of_a_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [torch.ones(n) for n in (25_000_000, 50_000_000, 12_500_000)]
    del buffers
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print([page_faults_of_a_step() for _ in range(8)][-1])
"""


def faults_of_the_last_step(reuse: bool, env=None) -> int:
    code = STEPS.format(root=str(REPO_ROOT), reuse=reuse)
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                              env=env, timeout=120).stdout)


def test_steps_reuse_the_memory_freed_by_the_previous_ones():
    default = faults_of_the_last_step(reuse=False)
    assert default > 100  # glibc maps every buffer afresh: 350 MB in 4 KB (or 2 MB huge) pages
    assert faults_of_the_last_step(reuse=True) < default / 10


def test_malloc_settings_from_the_environment_are_left_alone():
    env = dict(os.environ, MALLOC_ARENA_MAX="2")  # the user chose malloc's settings: ours stay out
    assert faults_of_the_last_step(reuse=True, env=env) > 100
