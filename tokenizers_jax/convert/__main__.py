r"""Convert a published checkpoint into a workdir, or export one back.

  python -m tokenizers_jax.convert --from=taming --checkpoint=PATH \
      [--reference_config=model.yaml] --workdir=DIR [--set=data.source=...]
  python -m tokenizers_jax.convert --from=lpips [--checkpoint=vgg.pth] \
      --vgg=vgg16.pth --workdir=DIR
  python -m tokenizers_jax.convert --export=taming --workdir=DIR \
      --output=FILE.safetensors
"""

import json

from absl import app
from absl import flags

_FROM = flags.DEFINE_string('from', None, 'Source release: taming or lpips.')
_EXPORT = flags.DEFINE_string('export', None, 'Export target: taming.')
_CKPT = flags.DEFINE_string('checkpoint', None, 'The release checkpoint.')
_REF = flags.DEFINE_string(
    'reference_config', None, "The release's config (YAML or JSON); without "
    'it the architecture is read off the tensor shapes.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'The workdir written (--from) or read (--export); for '
    '--from=lpips the directory the two weight files go to.')
_OUTPUT = flags.DEFINE_string('output', None, 'Exported file (--export).')
_VGG = flags.DEFINE_string('vgg', None, '--from=lpips: torchvision-layout '
                           'VGG16 state dict.')
_LPIPS_DIR = flags.DEFINE_string(
    'lpips_dir', None, 'A --from=lpips output directory for the perceptual '
    'loss when the checkpoint has no LPIPS weights.')
_BASE = flags.DEFINE_string('base_config', None, 'Our config the workdir '
                            'starts from (default configs/vqgan.py:'
                            'imagenet_f16).')
_SIZE = flags.DEFINE_integer('image_size', None, 'data.image_size (default: '
                             "the release's resolution, else 256).")
_SET = flags.DEFINE_multi_string('set', [], 'Config override KEY=VALUE, e.g. '
                                 '--set=eval.inception_path=/data/pt_inception.pth')
_IGNORE = flags.DEFINE_multi_string('ignore', [], 'Tensor-name prefix to '
                                    'drop on purpose.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace existing '
                               'checkpoints in --workdir.')
_NO_EMA = flags.DEFINE_bool('no_ema', False, '--export: raw instead of EMA '
                            'weights.')
_EXPORT_DISC = flags.DEFINE_bool('export_discriminator', True,
                                 '--export: include the discriminator.')
_EXPORT_LPIPS = flags.DEFINE_bool('export_lpips', True, '--export: include '
                                  'the LPIPS weights the config names.')


def main(argv):
  del argv
  import tokenizers_jax.convert as convert_lib  # pylint: disable=g-import-not-at-top
  source, target = flags.FLAGS['from'].value, _EXPORT.value
  if bool(source) == bool(target):
    raise app.UsageError('give exactly one of --from and --export')
  if target:
    if not _OUTPUT.value:
      raise app.UsageError('--export needs --output=FILE')
    report = convert_lib.export(
        target, _WORKDIR.value, _OUTPUT.value, use_ema=not _NO_EMA.value,
        discriminator=_EXPORT_DISC.value, lpips=_EXPORT_LPIPS.value)
  elif source == 'lpips':
    report = convert_lib.convert('lpips', _CKPT.value, _WORKDIR.value,
                                 vgg=_VGG.value)
  else:
    report = convert_lib.convert(
        source, _CKPT.value, _WORKDIR.value,
        reference_config=_REF.value, base_config=_BASE.value,
        image_size=_SIZE.value, overrides=tuple(_SET.value),
        lpips_dir=_LPIPS_DIR.value, ignore=tuple(_IGNORE.value),
        overwrite=_OVERWRITE.value)
  print(json.dumps(report, indent=2, sort_keys=True))


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main)
