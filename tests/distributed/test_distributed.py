"""Data-parallel training equals one device (contract section 6).

Each engine runs `tests/distributed/equivalence.py` in fresh processes on
loopback: the same model trained for two steps (SimCLR and MoCo v2) on one
device and on 2 replicas must give the same losses and the same variables
(weights, key network, queue). Runs under the backend of the engine only.
"""

import os
import signal
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_fmicl
from keras_fmicl.utils import distributed
from tests.helpers import to_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 300


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_processes(commands_and_envs):
    """Starts the processes, waits with a time bound, kills them all on failure."""
    processes = [
        subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        for command, env in commands_and_envs
    ]
    outputs = []
    try:
        for process in processes:
            out, _ = process.communicate(timeout=TIMEOUT)
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    for process, out in zip(processes, outputs):
        assert process.returncode == 0, out[-4000:]
    return outputs


def assert_equivalent(path):
    results = np.load(path)
    for mode in ("simclr", "moco"):
        np.testing.assert_allclose(
            results[f"{mode}/parallel_losses"], results[f"{mode}/single_losses"],
            rtol=1e-5, atol=1e-5, err_msg=f"{mode} losses",
        )
        index = 0
        while f"{mode}/single_{index}" in results.files:
            single, parallel = results[f"{mode}/single_{index}"], results[f"{mode}/parallel_{index}"]
            if single.dtype.kind == "f":
                # atol 2e-5 of the variable's scale: f-MICL's MoCo queue holds
                # keys standardised over the batch (values up to ~3, whose
                # float32 round-off under sharding is ~3 times a unit's)
                scale = max(1.0, float(np.abs(single).max()))
                np.testing.assert_allclose(
                    parallel, single, rtol=1e-5, atol=2e-5 * scale, err_msg=f"{mode} variable {index}"
                )
            else:  # queue pointer and count, step counter: exactly equal
                np.testing.assert_array_equal(parallel, single, err_msg=f"{mode} variable {index}")
            index += 1
        assert index > 10
    # the MoCo queue was written twice: 32 gathered keys, not 2 x 16 local ones
    queue = [results[k] for k in results.files if k.startswith("moco/parallel_") and results[k].shape == (32, 8)]
    assert queue and np.all(np.abs(queue[0]).sum(axis=1) > 0)


def worker(engine, output):
    return [sys.executable, "-m", "tests.distributed.equivalence", f"--engine={engine}", f"--output={output}"]


requires_tensorflow = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute runs under the TensorFlow backend"
)
requires_jax = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="keras.distribution runs under the JAX backend"
)
requires_torch = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.distributed runs under the PyTorch backend"
)


@requires_tensorflow
def test_mirrored_strategy_on_two_cpus_equals_one_device(tmp_path):
    output = tmp_path / "mirrored.npz"
    run_processes([(worker("mirrored", output), environment(KERAS_BACKEND="tensorflow"))])
    assert_equivalent(output)


@requires_tensorflow
def test_multi_worker_mirrored_strategy_with_two_workers_equals_one_device(tmp_path):
    output = tmp_path / "multiworker.npz"
    ports = [free_port(), free_port()]
    cluster = '{"worker": [' + ", ".join(f'"127.0.0.1:{p}"' for p in ports) + "]}"
    commands = [
        (
            worker("multiworker", output),
            environment(
                KERAS_BACKEND="tensorflow",
                TF_CONFIG='{"cluster": %s, "task": {"type": "worker", "index": %d}}' % (cluster, index),
            ),
        )
        for index in range(2)
    ]
    run_processes(commands)
    assert_equivalent(output)


@requires_jax
def test_jax_data_parallel_on_two_devices_equals_one_device(tmp_path):
    output = tmp_path / "jax.npz"
    run_processes(
        [(worker("jax", output), environment(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2"))]
    )
    assert_equivalent(output)


@requires_torch
def test_torch_two_gloo_processes_equal_one_device(tmp_path):
    output = tmp_path / "torch.npz"
    port = free_port()
    commands = [
        (
            worker("torch", output),
            environment(
                KERAS_BACKEND="torch", RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=2,
                MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS=1,
            ),
        )
        for rank in range(2)
    ]
    run_processes(commands)
    assert_equivalent(output)


@requires_torch
def test_torchrun_two_processes_equal_one_device(tmp_path):
    output = tmp_path / "torchrun.npz"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "tests.distributed.equivalence", "--engine=torch", f"--output={output}",
    ]
    run_processes([(command, environment(KERAS_BACKEND="torch"))])
    assert_equivalent(output)


# ------------------------------------------------------- on a single device


def test_single_device_collectives_are_the_identity():
    x = np.arange(6, dtype="float32").reshape(3, 2)
    assert distributed.num_replicas() == 1
    assert distributed.replica_index() == 0
    np.testing.assert_array_equal(to_numpy(distributed.all_gather(x)), x)
    np.testing.assert_array_equal(to_numpy(distributed.cross_replica_sum(x)), x)
    assert float(distributed.scale_loss(keras.ops.convert_to_tensor(2.5))) == 2.5


def test_global_batch_normalization_is_batch_normalization_on_one_device(tmp_path):
    x = np.random.default_rng(0).normal(size=(16, 5)).astype("float32") * 3 + 1
    global_norm = keras_fmicl.layers.GlobalBatchNormalization(momentum=0.9)
    plain = keras.layers.BatchNormalization(momentum=0.9)
    np.testing.assert_allclose(
        to_numpy(global_norm(x, training=True)), to_numpy(plain(x, training=True)), rtol=1e-5, atol=1e-5
    )
    config = global_norm.get_config()
    assert "synchronized" not in config
    restored = keras_fmicl.layers.GlobalBatchNormalization.from_config(config)
    assert restored.momentum == 0.9


def test_global_negatives_is_part_of_the_loss_config():
    loss = keras_fmicl.FMICLLoss(global_negatives=False)
    assert loss.get_config()["global_negatives"] is False
    assert keras_fmicl.FMICLLoss.from_config(loss.get_config()).global_negatives is False
    assert keras_fmicl.InfoNCELoss().global_negatives is True
