"""Top-5 classes of image files, from a trained run.

    python -m alexnet_jax.predict --workdir DIR image.jpg [more.png ...] [--crops 10] [--step N]

Images are prepared as in evaluation: for large-image configs the central square resized to
``resize_size`` and the centre crop (or the paper's ten crops, softmax averaged); for small-image
configs (Fashion-MNIST, CIFAR-10) resized to the dataset's size first. Class names are the
dataset's own (ImageNet's 1000 synsets' names for ``imagenet2012``).
"""

import re
import sys

import jax
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, "The training run's directory.", required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
flags.DEFINE_enum('crops', '1', ['1', '10'], "Centre crop or the paper's ten crops.")
flags.DEFINE_integer('top', 5, 'How many classes to print per image.')


def load_image(path: str, config, image_shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """One image file as an evaluation batch of one: uint8 crops and where they came from."""
    import tensorflow as tf

    from alexnet_jax import preprocessing

    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=image_shape[2], expand_animations=False)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as error:
        message = re.sub(r'\{\{.*?\}\}\s*', '', getattr(error, 'message', str(error)))
        message = message.split(' [Op:')[0].strip()
        raise ValueError(f'{path} is not a readable image ({message}).') from None
    if config.crop_padding > 0:  # small-image configs: the dataset's own size, then pad
        size = [image_shape[0], image_shape[1]]
        image = tf.cast(tf.round(tf.image.resize(image, size, antialias=True)), tf.uint8)
        base_hw = preprocessing.base_size(config, tuple(size))
    else:
        base_hw = preprocessing.base_size(config)
    offsets, flips = preprocessing.eval_offsets(base_hw, config.image_size, config.eval_crops)
    crops = preprocessing.make_crops(image, offsets, flips, config, channels=image_shape[2])
    return {
        'image': crops.numpy()[None],
        'crop_yx': np.asarray(offsets, np.int32)[None],
        'flip': np.asarray(flips)[None],
    }


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise app.UsageError('Name at least one image file.')
    from alexnet_jax import input_pipeline, train

    try:
        config = train.config_from_workdir(FLAGS.workdir)
        config.eval_crops = int(FLAGS.crops)
        info = input_pipeline.get_dataset_info(config)
        batches = [load_image(p, config, info.image_shape) for p in paths]
        state = train.load_trained_state(config, FLAGS.workdir, FLAGS.step)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')
    stats = input_pipeline.load_stats(config)

    @jax.jit
    def probabilities(batch):
        images = input_pipeline.device_preprocess(batch, None, stats, config, train=False)
        flat = images.reshape(-1, *images.shape[-3:])
        variables = {'params': state.params, 'batch_stats': state.batch_stats}
        probs = jax.nn.softmax(state.apply_fn(variables, flat, train=False))
        return probs.reshape(images.shape[0], -1, probs.shape[-1]).mean(axis=1)

    for path, batch in zip(paths, batches, strict=True):
        probs = np.asarray(probabilities(batch))[0]
        print(path)
        for index in np.argsort(-probs)[: FLAGS.top]:
            name = info.class_names[index] if index < len(info.class_names) else str(index)
            print(f'  {probs[index]:7.2%}  {name}')


def run() -> None:
    """The console script's entry point."""
    app.run(main)


if __name__ == '__main__':
    run()
