"""What a step costs: matmul FLOPs counted from its jaxpr, and from its compiled HLO with the
bytes of its collectives.

`jaxpr_flops` counts the traced step before any compiler sees it (the counted FLOPs of
docs/scaling.md and the benchmarks). `stats` reads what a compiler made of it. XLA's `cost_analysis()` counts the body of a while loop once, and every `lax.scan` of the
rollout becomes one, so its FLOPs undercount a step by the scans' trip counts. `stats`
walks the compiled module's call graph instead: each computation's dots and convolutions
(2 FLOPs per multiply-add; the TPU compiler writes most matmuls as convolutions; the GPU
compiler, cuBLAS GEMM and cuDNN convolution custom-calls), times the trip count of every
while loop around it (the compiler's `known_trip_count`, else read from the loop's
condition: a counter compared with a constant, as `lax.scan` and `fori_loop` lower), the
larger branch of a conditional. Collectives are counted the same way, by the bytes each device contributes
(the operands of all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute).

The module is the per-device (SPMD-partitioned) program, so every number is per device.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re

import numpy as np

_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
          'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16,
          's4': 0.5, 'u4': 0.5}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')

_HEADER = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$')
_INSTR = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$')
_ARRAY = re.compile(r'\b([a-z]+\d*)\[([\d,]*)\]')
_CALLEE = re.compile(r'\b(calls|to_apply|body|condition|true_computation|false_computation)='
                     r'%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
_CONSTANT = re.compile(r'^\s*%?([\w.\-]+) = [su]\d+\[\]\S* constant\((-?\d+)\)')
_KNOWN_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


# --------------------------------------------------------------------------- jaxpr

def sub_jaxprs(value) -> list:
  """Jaxprs held by an equation parameter (ClosedJaxpr, Jaxpr, or a tuple of them)."""
  if hasattr(value, 'eqns'):
    return [value]
  if hasattr(value, 'jaxpr') and hasattr(value.jaxpr, 'eqns'):
    return [value.jaxpr]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in sub_jaxprs(v)]
  return []


def jaxpr_flops(jaxpr) -> tuple[float, bool]:
  """dot_general + conv FLOPs of a jaxpr (2 per multiply-add), scan bodies x length,
  the larger branch of a cond. Returns (flops, saw_while_loop): a while loop's body is
  counted once (its trip count is not static)."""
  total, saw_while = 0.0, False
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
      total += 2.0 * math.prod(lhs) * math.prod(rhs_free)
    elif name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      spec = eqn.params['dimension_numbers'].rhs_spec  # (out feature, in feature, spatial...)
      total += 2.0 * math.prod(out) * rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
    else:
      subs = {k: sub_jaxprs(v) for k, v in eqn.params.items()}
      subs = {k: v for k, v in subs.items() if v}
      if not subs:
        continue
      if name == 'cond':
        counts = [jaxpr_flops(j) for j in subs['branches']]
        total += max(c[0] for c in counts)
        saw_while |= any(c[1] for c in counts)
        continue
      scale = float(eqn.params['length']) if name == 'scan' else 1.0
      saw_while |= name == 'while'
      for jaxprs in subs.values():
        for j in jaxprs:
          flops, w = jaxpr_flops(j)
          total += scale * flops
          saw_while |= w
  return total, saw_while


# --------------------------------------------------------------------------- compiled HLO

@dataclasses.dataclass(frozen=True)
class Stats:
  """flops: matmul/convolution FLOPs per device and step, loops counted by trip count.
  collective_bytes: {'all-reduce': bytes, ...} per device and step.
  loops: [(body computation, trip count or None)] of every while loop in the module.
  """
  flops: float
  collective_bytes: dict
  loops: list

  @property
  def unknown_trip_counts(self) -> int:
    return sum(1 for _, n in self.loops if n is None)


def _split_type(rest: str) -> tuple[str, str]:
  """'f32[2,3]{1,0} dot(...), x=y' -> ('f32[2,3]{1,0}', 'dot(...), x=y'); tuples too."""
  if rest.startswith('('):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == '('
      depth -= ch == ')'
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].lstrip()
  head, _, tail = rest.partition(' ')
  return head, tail


def _arrays(text: str) -> list[tuple[str, list[int]]]:
  return [(t, [int(d) for d in dims.split(',') if d]) for t, dims in _ARRAY.findall(text)
          if t in _BYTES]


def _nbytes(arrays: list[tuple[str, list[int]]]) -> float:
  return sum(_BYTES[t] * math.prod(dims) for t, dims in arrays)


def _operands(call: str) -> str:
  """'dot(f32[2] %a, f32[2] %b), lhs=...' -> 'f32[2] %a, f32[2] %b'."""
  depth = 0
  for i, ch in enumerate(call):
    depth += ch == '('
    depth -= ch == ')'
    if depth == 0 and ch == ')':
      return call[call.index('(') + 1:i]
  return call


def _dims_attr(call: str, name: str) -> list[int]:
  m = re.search(name + r'=\{([\d,]*)\}', call)
  return [int(d) for d in m.group(1).split(',') if d] if m else []


def _operand_arrays(call: str, types: dict[str, str]) -> list[tuple[str, list[int]]]:
  """The first array of each operand: printed inline by some backends, by name otherwise."""
  operands = _operands(call)
  if _ARRAY.search(operands):
    return _arrays(operands)
  names = re.findall(r'%([\w.\-]+)', operands)
  return [(_arrays(types.get(n, '')) or [('', [])])[0] for n in names]


def _dot_flops(out: list[int], lhs: list[int], contracting: list[int]) -> float:
  return 2.0 * math.prod(out) * math.prod(lhs[d] for d in contracting)


def _window(call: str, key: str, rank: int, default: int) -> list[list[int]]:
  """window={size=3x3 stride=2x2 pad=1_1x0_0 ...} -> per spatial dimension [values]."""
  m = re.search(r'window=\{[^}]*\b' + key + r'=([\d_x]+)', call)
  if not m:
    return [[default, default] if key == 'pad' else [default] for _ in range(rank)]
  return [[int(v) for v in part.split('_')] for part in m.group(1).split('x')]


def _conv_flops(out: list[int], lhs: list[int], rhs: list[int], call: str) -> float:
  """FLOPs of a convolution, 2 per multiply-add: per spatial dimension, the (output, kernel
  tap) pairs that land on a real input element, not on padding or the holes of a dilated
  input (the TPU compiler writes batched matmuls as convolutions whose batch dimensions are
  spatial ones, padded so that one tap in a window lands), times the kernel's input
  features and the output's batch x feature elements."""
  labels = re.search(r'dim_labels=(\w+)_(\w+)->(\w+)', call)
  if not labels:
    return 0.0
  lhs_l, rhs_l, out_l = labels.groups()
  rank = sum(ch.isdigit() for ch in out_l)
  strides, pads = _window(call, 'stride', rank, 1), _window(call, 'pad', rank, 0)
  lhs_dil, rhs_dil = _window(call, 'lhs_dilate', rank, 1), _window(call, 'rhs_dilate', rank, 1)
  macs = math.prod(out) * rhs[rhs_l.index('i')]
  for d in range(rank):
    n, m = lhs[lhs_l.index(str(d))], out[out_l.index(str(d))]
    k = rhs[rhs_l.index(str(d))]
    taps = (np.arange(m)[:, None] * strides[d][0] + np.arange(k)[None, :] * rhs_dil[d][0]
            - pads[d][0])
    real = (taps >= 0) & (taps <= (n - 1) * lhs_dil[d][0]) & (taps % lhs_dil[d][0] == 0)
    macs *= real.sum() / m  # the output's spatial size is in math.prod(out)
  return 2.0 * float(macs)


def _matmul_flops(out_type: str, opcode: str, call: str, types: dict[str, str]) -> float:
  out = _arrays(out_type)
  operands = _operand_arrays(call, types)
  if not out or len(operands) < 2:
    return 0.0
  if opcode == 'dot':
    return _dot_flops(out[0][1], operands[0][1], _dims_attr(call, 'lhs_contracting_dims'))
  return _conv_flops(out[0][1], operands[0][1], operands[1][1], call)


def _library_call_flops(out_type: str, call: str, types: dict[str, str]) -> float:
  """FLOPs of the GPU compiler's library calls: a cuBLAS GEMM (its dot's dimension numbers
  in the backend config), a cuDNN convolution (window and dim_labels of the forward
  convolution; the backward passes take that convolution's FLOPs, their shapes swapped:
  input gradient = (output gradient, kernel), kernel gradient = (input, output gradient)).
  Outputs are (result, workspace) tuples: the result is the first array."""
  target = _TARGET.search(call)
  out, operands = _arrays(out_type), _operand_arrays(call, types)
  if not target or not out or len(operands) < 2:
    return 0.0
  target = target.group(1)
  if target.startswith('__cublas'):
    dims = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', call)
    contracting = [int(d) for d in re.findall(r'\d+', dims.group(1))] if dims else []
    return _dot_flops(out[0][1], operands[0][1], contracting)
  if target.startswith('__cudnn$conv'):
    # (forward output, forward input, kernel) of the convolution each pass belongs to.
    forward = {'__cudnn$convBackwardInput': (operands[0][1], out[0][1], operands[1][1]),
               '__cudnn$convBackwardFilter': (operands[1][1], operands[0][1], out[0][1])}.get(
                   target, (out[0][1], operands[0][1], operands[1][1]))
    return _conv_flops(*forward, call)
  return 0.0


def _parse(text: str) -> tuple[dict[str, list[str]], str]:
  """{computation name: its instruction lines}, and the entry computation's name."""
  comps: dict[str, list[str]] = {}
  entry, current = '', None
  for line in text.splitlines():
    if current is None:
      m = _HEADER.match(line)
      if m and not line.startswith(' '):
        current = m.group(1)
        comps[current] = []
        if line.startswith('ENTRY'):
          entry = current
    elif line.startswith('}'):
      current = None
    else:
      comps[current].append(line)
  return comps, entry


def _trip_count(comps: dict, condition: str) -> int | None:
  """N of a loop whose condition compares its counter with one constant N (LT), directly
  or in a fusion it calls (as `lax.scan` and `fori_loop` lower); else None."""
  lines = comps.get(condition, [])
  called = [c for line in lines for _, c in _CALLEE.findall(line)]
  compares = [line for c in [condition, *called] for line in comps.get(c, [])
              if 'compare(' in line and 'direction=LT' in line]
  constants = [int(m.group(2)) for m in map(_CONSTANT.match, lines) if m]
  return constants[0] if len(compares) == 1 and len(constants) == 1 else None


def stats(text: str) -> Stats:
  """Stats of one compiled module's HLO text (`compiled.as_text()`)."""
  comps, entry = _parse(text)
  types = {m.group(1): _split_type(m.group(2))[0]
           for lines in comps.values() for m in map(_INSTR.match, lines) if m}
  loops: list = []

  @functools.lru_cache(maxsize=None)
  def visit(name: str) -> tuple[float, tuple]:
    flops, coll = 0.0, collections.Counter()
    for line in comps.get(name, []):
      m = _INSTR.match(line)
      if not m:
        continue
      out_type, call = _split_type(m.group(2))
      opcode = call.partition('(')[0]
      if opcode in ('dot', 'convolution'):
        flops += _matmul_flops(out_type, opcode, call, types)
      elif opcode == 'custom-call':
        flops += _library_call_flops(out_type, call, types)
      kind = opcode.removesuffix('-start')
      if kind in COLLECTIVES:
        coll[kind] += _nbytes(_operand_arrays(call, types))
      callees = dict((k, v) for k, v in _CALLEE.findall(call))
      branches = _BRANCHES.search(call)
      if opcode == 'while':
        known = _KNOWN_TRIPS.search(call)
        n = int(known.group(1)) if known else _trip_count(comps, callees['condition'])
        loops.append((callees['body'], n))
        f, c = visit(callees['body'])
        scale = 1 if n is None else n
        flops += scale * f
        coll.update({k: scale * v for k, v in dict(c).items()})
        continue
      subs = ([b.strip().lstrip('%') for b in branches.group(1).split(',')] if branches else
              [callees[k] for k in ('true_computation', 'false_computation') if k in callees])
      if subs:  # a conditional runs one branch: count the larger
        f, c = max((visit(s) for s in subs), key=lambda fc: fc[0])
        flops += f
        coll.update(dict(c))
        continue
      for key in ('calls', 'to_apply'):
        if key in callees:
          f, c = visit(callees[key])
          flops += f
          coll.update(dict(c))
    return flops, tuple(sorted(coll.items()))

  flops, coll = visit(entry)
  return Stats(flops=flops, collective_bytes={k: v for k, v in coll}, loops=loops)
