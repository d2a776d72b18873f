"""EEG electrode names: the 10-20 channels, the electrode vocabulary, aliases.

Channel labels in files vary ('EEG FP1-REF', 'Fc5.', old 'T3'):
`canonical_name` strips the decorations and maps the old 10-20 names to the
new ones; `electrode_index` gives a channel's index in the spatial-embedding
vocabulary `ELECTRODES`.
"""

from __future__ import annotations

# The 19 channels of the international 10-20 system.
CHANNELS_1020 = ('Fp1', 'Fp2', 'F7', 'F3', 'Fz', 'F4', 'F8', 'T7', 'C3', 'Cz',
                 'C4', 'T8', 'P7', 'P3', 'Pz', 'P4', 'P8', 'O1', 'O2')
# Electrode vocabulary of the spatial embedding (index 0 is reserved for the
# class token): the 10-20/10-10 names of MNE's standard_1020 montage.
ELECTRODES = (
    'Fp1 Fpz Fp2 AF9 AF7 AF5 AF3 AF1 AFz AF2 AF4 AF6 AF8 AF10 F9 F7 F5 F3 F1 '
    'Fz F2 F4 F6 F8 F10 FT9 FT7 FC5 FC3 FC1 FCz FC2 FC4 FC6 FT8 FT10 T9 T7 C5 '
    'C3 C1 Cz C2 C4 C6 T8 T10 TP9 TP7 CP5 CP3 CP1 CPz CP2 CP4 CP6 TP8 TP10 P9 '
    'P7 P5 P3 P1 Pz P2 P4 P6 P8 P10 PO9 PO7 PO5 PO3 PO1 POz PO2 PO4 PO6 PO8 '
    'PO10 O1 Oz O2 O9 Iz O10 M1 M2 A1 A2').split()
_OLD_NAMES = {'T3': 'T7', 'T4': 'T8', 'T5': 'P7', 'T6': 'P8'}
# Approximate 2D scalp positions (unit disc, +y = nose) of the 10-20 channels,
# for the synthetic topographies.
POSITIONS = {
    'Fp1': (-0.31, 0.95), 'Fp2': (0.31, 0.95), 'F7': (-0.81, 0.59),
    'F3': (-0.45, 0.55), 'Fz': (0.0, 0.5), 'F4': (0.45, 0.55),
    'F8': (0.81, 0.59), 'T7': (-1.0, 0.0), 'C3': (-0.5, 0.0), 'Cz': (0.0, 0.0),
    'C4': (0.5, 0.0), 'T8': (1.0, 0.0), 'P7': (-0.81, -0.59),
    'P3': (-0.45, -0.55), 'Pz': (0.0, -0.5), 'P4': (0.45, -0.55),
    'P8': (0.81, -0.59), 'O1': (-0.31, -0.95), 'O2': (0.31, -0.95)}


def electrode_index(name: str) -> int:
  """1-based index of a channel in `ELECTRODES` (0 is the class token)."""
  canon = canonical_name(name)
  for i, e in enumerate(ELECTRODES):
    if e.lower() == canon.lower():
      return i + 1
  raise ValueError(f'unknown electrode {name!r}; known: 10-20/10-10 names '
                   f'such as {", ".join(CHANNELS_1020)}')


def canonical_name(label: str) -> str:
  """'EEG FP1-REF' -> 'FP1', 'Fc5.' -> 'Fc5', 'T3' -> 'T7' (case kept)."""
  name = label.strip()
  if name.upper().startswith('EEG '):
    name = name[4:].strip()
  for suffix in ('-REF', '-LE', '-AR', '-AVG', '-A1', '-A2', '-M1', '-M2'):
    if name.upper().endswith(suffix):
      name = name[:-len(suffix)]
  name = name.rstrip('.').strip()
  return _OLD_NAMES.get(name.upper(), name)
