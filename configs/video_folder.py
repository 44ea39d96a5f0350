r"""Your own videos: a folder of mp4 / webm / gif files or frame folders, or DAVIS 2017.

Variants: a method (slotcurri, the default | slotcontrast | ssync | slotcurri_ssync), and
`_cnn` after it (or `cnn` alone) for the small CNN model that trains on CPU in minutes.

  # a few videos, no masks, on a CPU: trains, then writes figures and predicted masks
  python -m slotcurri_jax.main --config=configs/video_folder.py:cnn --workdir=/tmp/my_videos \
      --config.data.video_folder.root=/path/to/my_videos
  # DAVIS 2017 (DAVIS-2017-trainval-480p.zip unpacked): trains on ImageSets/2017/train.txt,
  # scores the 30 val.txt videos against their masks
  python -m slotcurri_jax.main --config=configs/video_folder.py --workdir=$WORKDIR \
      --config.data.video_folder.root=/data/DAVIS
  python -m slotcurri_jax.main --config=configs/video_folder.py:slotcontrast ...
  # the small model on DAVIS, on a CPU
  python -m slotcurri_jax.main --config=configs/video_folder.py:cnn --workdir=/tmp/davis_cnn \
      --config.data.video_folder.root=/data/DAVIS

The default is the papers' real-world setting, YouTube-VIS's (configs/ytvis.py: DINOv2
ViT-B/14 weights converted as for MOVi, see README "Weights"; 518 px, 7 slots, each
method's learning rate, batch and contrast pool), on the folder's videos. The `cnn`
variants are configs/demo.py's model (an 8x8-patch CNN, 7 slots, 64 px) on the folder,
trained for 400 steps.

The folder is built once into ~/tensorflow_datasets/video_folder/ (data/video_folder.py);
the layouts, masks and split rules are in data/video_folder_scan.py and the README
("Your own videos").
"""
import pathlib

from slotcurri_jax import config as config_lib

HERE = pathlib.Path(__file__).resolve().parent


def get_config(variant=None):
  variant = variant or ''
  small = variant == 'cnn' or variant.endswith('_cnn')
  method = variant[:-len('cnn')].rstrip('_') if small else variant
  c = config_lib.load(f'{HERE / ("demo.py" if small else "ytvis.py")}:{method}')
  c.data.name = 'video_folder'
  c.data.flip_prob = 0.0  # YouTube-VIS's clips, which this dataset shares
  c.data.max_instances = 25  # object ids of one evaluated video, background included
  c.data.num_eval_videos = -1  # every held-out video (not YouTube-VIS's first 210)
  if small:
    c.data.shuffle_buffer = 64
    c.data.eval_batch_size = 4
    c.data.video_folder.short_side = 64  # stored as the model sees it
    c.data.video_folder.max_eval_frames = 48
    c.train.steps = 400
    c.train.warmup_steps = 50
    c.train.checkpoint_every_steps = 200
  return c
