"""Runs a few train steps on a fixed global batch in one of N processes; used by test_multihost.

    python tests/multihost_driver.py OUT.npz [PROCESS_ID NUM_PROCESSES PORT [PREPARED DATA_DIR]]

Each process feeds only its own devices' rows of the global batch, as each host of a cluster
reads only its own shard. With PREPARED (a folder from `alexnet_jax.prepare`; DATA_DIR holds
its cached statistics) the batches come from the prepared set's training stream instead, each
process reading its own slice, cropped and flipped on the device. Process 0 writes the final
parameters and every step's loss.
"""

import sys

import jax
import numpy as np

STEPS, GLOBAL_BATCH = 3, 8


def main(
    out: str,
    process_id: int = 0,
    num_processes: int = 1,
    port: int = 0,
    prepared: str = '',
    data_dir: str = '',
) -> None:
    if num_processes > 1:
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
        jax.distributed.initialize(f'127.0.0.1:{port}', num_processes, process_id)
    from alexnet_jax import dataset_stats, datasets, input_pipeline, models, parallel, steps
    from tests.test_train import small_config

    config = small_config(dropout_rate=0.0, pca_noise_std=0.0)
    if prepared:
        config.dataset, config.dataset_path, config.data_dir = 'prepared', prepared, data_dir
        config.batch_size, config.random_crop, config.input_threads = GLOBAL_BATCH, True, 1
    shape = datasets.get(config).info().image_shape
    model = models.create_model(config).clone(bn_axis_name=parallel.AXIS)
    state = parallel.replicate(steps.create_train_state(config, model, shape, steps=10))
    p_train, _ = steps.pmap_steps(config, dataset_stats.load_stats(config))
    rng = np.random.default_rng(0)
    devices, local = jax.device_count(), jax.local_device_count()
    stream = (
        input_pipeline.create_train_iter(config, local_device_count=local) if prepared else None
    )
    losses = []
    for _ in range(STEPS):
        if stream is not None:
            batch = next(stream)
        else:
            images = rng.integers(0, 256, (GLOBAL_BATCH, *shape), dtype=np.uint8)
            labels = rng.integers(0, 10, (GLOBAL_BATCH,), dtype=np.int32)
            rows = slice(process_id * local, (process_id + 1) * local)
            batch = {
                'image': images.reshape(devices, -1, *shape)[rows],
                'label': labels.reshape(devices, -1)[rows],
            }
        state, metrics = p_train(state, parallel.shard(batch), jax.random.key(0))
        losses.append(jax.device_get(metrics['loss']))
    if stream is not None:
        stream.close()  # the reader's files and threads
    params = jax.device_get(state.params)
    if process_id == 0:
        flat = {
            '/'.join(k.key for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(params)
        }
        np.savez(out, loss=np.asarray(losses[-1]), losses=np.asarray(losses), **flat)


if __name__ == '__main__':
    main(sys.argv[1], *map(int, sys.argv[2:5]), *sys.argv[5:7])
