"""Top-5 classes of image files, from a trained run.

    python -m alexnet_jax.predict --workdir DIR image.jpg [more.png | FOLDER ...] [--crops 10]
        [--step N] [--top K] [--json] [--no_resize]

A folder stands for the image files in it (by extension, sorted; not its sub-folders). Images
are prepared as in evaluation: for large-image configs the central square resized to
``resize_size`` and the centre crop (or the paper's ten crops, softmax averaged); for
small-image configs (Fashion-MNIST, CIFAR-10, small image folders) resized to the dataset's
image size first. Class names are the dataset's own (ImageNet's 1000 synsets' names for
``imagenet2012``). ``--json`` prints one JSON object per image instead:
``{"path": ..., "top": [{"class": i, "name": ..., "prob": p}, ...]}``. ``--no_resize`` takes
images already at the model's input size and feeds them unchanged (normalisation only).
"""

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from alexnet_jax import cli, runtime

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, "The training run's directory.", required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
flags.DEFINE_enum('crops', '1', ['1', '10'], "Centre crop or the paper's ten crops.")
flags.DEFINE_integer('top', 5, 'How many classes to print per image.')
flags.DEFINE_bool('json', False, 'One JSON line per image: path, classes, names, probabilities.')
flags.DEFINE_bool(
    'no_resize',
    False,
    'Images already at the model input size, fed unchanged (normalisation only, one crop).',
)


def image_paths(args: list[str]) -> list[str]:
    """The image files `args` name: files as given, folders as their image files, sorted.

    A path that does not exist, or a folder without image files, is a FileNotFoundError.
    """
    from alexnet_jax.image_folder import IMAGE_EXTENSIONS

    paths = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                str(f)
                for f in path.iterdir()
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and f.name[0] != '.'
            )
            if not found:
                raise FileNotFoundError(
                    f'{arg} is a folder without image files ({"/".join(IMAGE_EXTENSIONS)}).'
                )
            paths += found
        elif path.exists():
            paths.append(arg)
        else:
            raise FileNotFoundError(f'{arg} does not exist: name image files or folders of them.')
    return paths


def load_image(
    path: str,
    config,
    image_shape: tuple[int, int, int],
    stored_hw: tuple[int, int] | None = None,
    resize: bool = True,
) -> dict[str, np.ndarray]:
    """One image file as an evaluation batch of one: uint8 crops and where they came from.

    `stored_hw`: the dataset's image size, which small-image configs resize to (default: the
    model input's size). `resize=False`: the image must be of the model input's size and is the
    one crop, as if cut from the centre of a prepared image (so the mean image's centre is
    subtracted).
    """
    import tensorflow as tf

    from alexnet_jax import preprocessing

    try:
        data = tf.io.read_file(path)
        image = tf.io.decode_image(data, channels=image_shape[2], expand_animations=False)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as error:
        message = re.sub(r'\{\{.*?\}\}\s*', '', getattr(error, 'message', str(error)))
        message = message.split(' [Op:')[0].strip()
        raise ValueError(f'{path} is not a readable image ({message}).') from None
    if not resize:
        return _as_input(image.numpy(), path, config, stored_hw or image_shape[:2])
    if config.crop_padding > 0:  # small-image configs: the dataset's own size, then pad
        size = list(stored_hw or image_shape[:2])
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


def _as_input(image: np.ndarray, path: str, config, stored_hw) -> dict[str, np.ndarray]:
    from alexnet_jax import preprocessing

    size = config.image_size
    if image.shape[:2] != (size, size):
        raise ValueError(
            f'{path} is {image.shape[1]}x{image.shape[0]}; --no_resize takes images of the '
            f'model input size, {size}x{size}. Leave --no_resize out to resize and crop it.'
        )
    base_h, base_w = preprocessing.base_size(config, tuple(stored_hw))
    centre = ((base_h - size) // 2, (base_w - size) // 2)
    return {
        'image': image[None, None],
        'crop_yx': np.asarray([centre], np.int32)[None],
        'flip': np.asarray([False])[None],
    }


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError('Name at least one image file or folder.')
    runtime.configure()
    cli.quiet_libraries()
    from alexnet_jax import dataset_stats, datasets, device_preprocessing, steps, trained

    try:
        paths = image_paths(argv[1:])
        config = trained.config_from_workdir(FLAGS.workdir)
        config.eval_crops = int(FLAGS.crops)
        info = datasets.run_dataset_info(config, FLAGS.workdir)
        # The first image is read before the model loads: a wrong kind of file fails at once.
        first = load_image(paths[0], config, info.image_shape, info.image_hw, not FLAGS.no_resize)
        state = trained.load_trained_state(config, FLAGS.workdir, FLAGS.step)
        stats = dataset_stats.load_stats(config)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f'error: {error}')

    variables = {'params': state.params, 'batch_stats': state.batch_stats}

    @jax.jit
    def probabilities(variables, batch):  # the evaluation's inference, on one image's crops
        images = device_preprocessing.device_preprocess(batch, None, stats, config, train=False)
        return steps.predict_probs(state.apply_fn, variables, images)

    def batches() -> Iterator[tuple[str, dict]]:
        yield paths[0], first
        for path in paths[1:]:
            yield (
                path,
                load_image(path, config, info.image_shape, info.image_hw, not FLAGS.no_resize),
            )

    try:
        for path, batch in batches():
            probs = np.asarray(probabilities(variables, batch))[0]
            top = [int(i) for i in np.argsort(-probs, kind='stable')[: FLAGS.top]]
            names = [info.class_names[i] if i < len(info.class_names) else str(i) for i in top]
            if FLAGS.json:
                entries = [
                    {'class': i, 'name': name, 'prob': float(probs[i])}
                    for i, name in zip(top, names, strict=True)
                ]
                print(json.dumps({'path': path, 'top': entries}), flush=True)
            else:
                print(path)
                for i, name in zip(top, names, strict=True):
                    print(f'  {probs[i]:7.2%}  {name}')
    except ValueError as error:  # an unreadable image among a folder's files
        sys.exit(f'error: {error}')
    except BrokenPipeError:  # `predict FOLDER | head`: the reader has gone, so stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def run() -> None:
    """The console script's entry point."""
    app.run(main)


if __name__ == '__main__':
    run()
