"""The README's quantizer example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def test_readme_quantizer_example_runs():
  blocks = re.findall(r'```python\n(.*?)```', README.read_text(), re.S)
  runnable = [b for b in blocks if 'from tokenizers_jax import quantizers' in b]
  assert runnable, 'README has no quantizer example'
  for block in runnable:
    exec(compile(block, str(README), 'exec'), {})  # pylint: disable=exec-used
