"""Multi-process training: train.py as 2 processes on localhost (CPU collectives), as a Slurm
job step or a plain multi-node launch would start it. Importing the project initializes no JAX
backend (jax.distributed.initialize must come first)."""

import glob
import json
import os
import pkgutil
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ['--config=configs/default.py', '--config.model.depth=8', '--config.model.width=8',
         '--config.data.batch_size=32', '--config.num_train_steps=60',
         '--config.log_every_steps=10', '--config.eval_every_steps=20',
         '--config.checkpoint_every_steps=20']


def test_importing_any_module_initializes_no_jax_backend():
  """Every module of the project's packages (walked, so a new one is covered), then the entry
  points: none may touch a device on import."""
  modules = ['cli', 'errors']
  for pkg in ('models', 'training', 'data', 'experiments', 'configs', 'benchmarks'):
    modules += [m.name for m in pkgutil.walk_packages([os.path.join(ROOT, pkg)], pkg + '.')]
  assert len(modules) > 40
  for entry in ('train', 'eval'):   # each defines its own flags: one process each
    code = ('import importlib, sys\n'
            'import jax._src.xla_bridge as xb\n'
            f'for name in {modules + [entry]!r}:\n'
            '  try:\n'
            '    importlib.import_module(name)\n'
            '  except ModuleNotFoundError as e:\n'   # an optional package (torch: benchmarks)
            '    if e.name.split(".")[0] in ("models", "training", "data", "experiments"):\n'
            '      raise\n'
            '  if xb.backends_are_initialized():\n'
            '    sys.exit("initialized by " + name)\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(workdir, how, runner=(), extra=()):
  """Two processes; `how`: 'slurm' (the environment of a 2-task Slurm job step) or 'plain'
  (JAX_COORDINATOR_ADDRESS with --num_processes and --process_id). runner[i]: what process i
  runs instead of train.py (tests/fault_runner.py ... --)."""
  port = free_port()
  procs = []
  for i in range(2):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'XLA_FLAGS'))}
    env['JAX_COORDINATOR_ADDRESS'] = f'127.0.0.1:{port}'
    args = []
    if how == 'slurm':
      env.update(SLURM_JOB_ID='4242', SLURM_NTASKS='2', SLURM_PROCID=str(i),
                 SLURM_LOCALID=str(i), SLURM_STEP_NODELIST='localhost')
    else:
      args = ['--num_processes=2', f'--process_id={i}']
    program = list(runner[i]) if runner else ['train.py']
    procs.append(subprocess.Popen(
        [sys.executable, *program, *FLAGS, f'--workdir={workdir}', '--config.distributed=True',
         '--peer_timeout=10', *args, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True))
  return procs


def finish(procs, timeout=600):
  outs = [p.communicate(timeout=timeout) for p in procs]
  return [p.returncode for p in procs], outs


def status(workdir):
  with open(os.path.join(workdir, 'status.json')) as f:
    return json.load(f)


def one_process_on_two_devices(workdir: str) -> None:
  """The reference of a 2-process run: one process, two (simulated) devices, the same global
  batch (what a 2-process run must equal: the first test below)."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  result = subprocess.run([sys.executable, 'train.py', *FLAGS, f'--workdir={workdir}'], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_two_processes_train_resume_after_a_kill_and_equal_one_process_on_two_devices(tmp_path):
  ref = str(tmp_path / 'ref')
  one_process_on_two_devices(ref)

  # two processes (Slurm-style); process 1 is killed (SIGKILL) after its first checkpoint save
  workdir = str(tmp_path / 'run')
  killer = [os.path.join(ROOT, 'tests', 'fault_runner.py'),
            'training.checkpoints:Checkpoints.save', '2', 'after', '--']
  t0 = time.time()
  procs = launch(workdir, 'slurm', runner=[['train.py'], killer])
  codes, outs = finish(procs)
  assert codes[1] == -9, outs[1][1][-2000:]
  # the survivor stops too, at once (its collective fails) or within the peer time-out (10 s),
  # records why, and says it in one line (no C++ abort page from JAX's coordination service)
  assert codes[0] == 1 and time.time() - t0 < 300, outs[0][1][-3000:]
  survivor_err = outs[0][1].strip().splitlines()
  assert survivor_err[-1].startswith('error: ') and 'peer process' in survivor_err[-1], \
      survivor_err[-5:]
  assert not any('Check failure stack trace' in line for line in survivor_err)
  assert status(workdir)['state'] == 'failed' and 'peer' in status(workdir)['error']
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '20'))

  # both restarted (a plain launch this time): resume, finish, equal the reference
  codes, outs = finish(launch(workdir, 'plain'))
  assert codes == [0, 0], [o[1][-2000:] for o in outs]
  assert all('resumed from the checkpoint at step' in o[0] for o in outs)
  assert status(workdir)['state'] == 'finished'
  assert status(workdir)['metrics'] == status(ref)['metrics']
  # only process 0 wrote the workdir's files: one event file per start, each named by a pid of
  # a process 0 (names end in .<pid>.<time_ns>)
  events = glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert len(events) == 2, events
  assert procs[0].pid in {int(e.split('.')[-2]) for e in events}


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_at_the_same_step_and_resumes(tmp_path):
  """Preemption is synchronized: only process 1 receives the signal (SIGUSR2, handed to JAX's
  notifier as SIGTERM: the path of SIGTERM itself too; benchmarks/cluster.py sends SIGTERM); both
  save the same checkpoint, the run is `interrupted`, both exit 143, and the same command
  finishes it with the metrics of a run never stopped (one process on two devices: what an
  unbroken 2-process run equals, the test above)."""
  sig = 'SIGUSR2'
  ref = str(tmp_path / 'ref')
  one_process_on_two_devices(ref)

  workdir = str(tmp_path / 'run')
  sender = [os.path.join(ROOT, 'tests', 'fault_runner.py'),
            'training.run:Run.log_train', '2', f'signal:{sig}', '--']
  t0 = time.time()
  codes, outs = finish(launch(workdir, 'plain', runner=[['train.py'], sender]))
  assert codes == [143, 143], [o[1][-2000:] for o in outs]
  st = status(workdir)
  assert st['state'] == 'interrupted' and 20 <= st['step'] < 60, st
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  assert saved[-1] == st['step'], (saved, st)   # both processes saved at the same step
  assert time.time() - t0 < 300

  codes, outs = finish(launch(workdir, 'plain'))
  assert codes == [0, 0], [o[1][-2000:] for o in outs]
  assert status(workdir)['state'] == 'finished'
  assert status(workdir)['metrics'] == status(ref)['metrics']


@pytest.mark.slow
def test_a_peer_that_stops_answering_fails_the_run_within_the_peer_timeout(tmp_path):
  """A peer that hangs without closing its connections (SIGSTOP: as a machine that vanished
  looks) is noticed by the heartbeat watchdog: the other process records `failed` with the
  reason and exits 1 within the peer time-out (10 s here), instead of waiting in a collective
  forever."""
  workdir = str(tmp_path / 'run')
  stopper = [os.path.join(ROOT, 'tests', 'fault_runner.py'),
             'training.run:Run.log_train', '2', 'signal:SIGSTOP', '--']
  procs = launch(workdir, 'plain', runner=[['train.py'], stopper])
  try:
    out, err = procs[0].communicate(timeout=300)
    assert procs[0].returncode == 1, err[-3000:]
    assert err.strip().splitlines()[-1].startswith('error: process 1 of 2 sent no heartbeat')
    st = status(workdir)
    assert st['state'] == 'failed' and 'no heartbeat for 10 s' in st['error'], st
    assert not os.path.exists(os.path.join(workdir, 'lock.json'))   # the lock is let go
  finally:
    procs[1].kill()
    procs[1].communicate()
