"""Solver: Caffe's training loop (Solver::Step / Solve) with its log lines.

One iteration: clear param diffs → test (every test_interval) → iter_size × forward/backward
→ smoothed loss → display → update (lr policy, clip, normalize, regularize, rule) → iter += 1
→ snapshot (every ``snapshot`` iterations or on request) → stop on request.

The hot path reads nothing back from the compute device: the loss, its smoothed average and
the divergence flag are 0-d device arrays, read only when the solver displays, tests,
snapshots or returns from ``step`` (tests/train/test_host_reads.py counts the reads).
"""

from __future__ import annotations

import logging
import signal
import time
import warnings
from pathlib import Path

import numpy as np

from netforge import backend, config
from netforge import netforge_pb2 as pb
from netforge.backend import to_host
from netforge.errors import ConfigError
from netforge.graph import debug_info, train_memory
from netforge.net import Net
from netforge.ops.random import philox_key
from netforge.train import cuda_graph, divergence, lr_policies, mixed_precision
from netforge.train.evaluate import add_outputs
from netforge.train.metrics import MetricsWriter, metrics_path
from netforge.train.snapshots import SnapshotWriter, restore_state
from netforge.train.update_rules import make_update_rule

log = logging.getLogger("netforge")


class SignalRequests:
    """Turns SIGINT/SIGHUP into requested actions ("stop", "snapshot" or "none")."""

    def __init__(self, sigint: str = "stop", sighup: str = "snapshot"):
        for effect in (sigint, sighup):
            if effect not in ("stop", "snapshot", "none"):
                raise ConfigError(f'signal effect must be stop, snapshot or none, got "{effect}"')
        self.effects = {signal.SIGINT: sigint, signal.SIGHUP: sighup}
        self.pending: list[str] = []
        self._previous = {}

    def install(self) -> None:
        for sig in self.effects:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        effect = self.effects.get(signum, "none")
        if effect != "none":
            self.pending.append(effect)

    def take(self) -> str:
        return self.pending.pop(0) if self.pending else "none"


class Solver:
    """Trains the solver file's train net and tests its test nets.

    Args:
        solver: path of a solver prototxt, or a SolverParameter.
        level, stages: NetState level/stages merged into the train net's state.
        signals: a SignalRequests the CLI installs; None means signals are not watched.
        metrics: write ``<snapshot_prefix>_metrics.jsonl`` (JSON lines) while training.
        parallel: this rank's ``netforge.train.parallel.DataParallel`` in a data-parallel job
            (None: a single process). Its hooks are the ``self.parallel`` lines below.
        no_graph: never capture the step as a CUDA graph (``--no-graph``; GPU only).
        recompute_columns: convolutions rebuild their im2col columns in backward instead of
            keeping them per layer (the default): much less memory for about the same time
            on the CPU, as measured (graph/train_memory.recompute_columns); False keeps them.
        share_activations: the train net's intermediate activations share memory by
            liveness with one another and with the diffs (graph/train_memory.py); False
            keeps every blob's data readable after a step (pycaffe habits), at the memory
            cost of keeping them all.
    """

    forced_type: str | None = None  # set by the pycaffe-named subclasses

    def __init__(self, solver, *, level: int = 0, stages=(), signals: SignalRequests | None = None,
                 dtype=np.float32, metrics: bool = True, parallel=None,
                 no_graph: bool = False, recompute_columns: bool = True,
                 share_activations: bool = True):
        if isinstance(solver, (str, Path)):
            self.path = Path(solver)
            sp = config.load_solver_param(solver)
        else:
            self.path = None
            sp = pb.SolverParameter()
            sp.CopyFrom(solver)
            config.upgrade_solver_param(sp)
            config.validate_solver(sp, "solver")
        if self.forced_type:  # pycaffe's SGDSolver, AdamSolver, ... (solver_classes)
            sp.type = self.forced_type
        self.param = sp
        if not sp.lr_policy:
            raise ConfigError(f"{self.path or 'solver'}: lr_policy is not set "
                              "(fixed, step, exp, inv, multistep, poly or sigmoid)")
        lr_policies.learning_rate(sp, 0)  # fail early on a bad policy
        self.signals = signals
        seed = sp.random_seed if sp.random_seed >= 0 else None
        self.parallel = parallel
        if parallel:  # every rank draws the same data stream
            seed = parallel.common_seed(seed)
        self.rng = np.random.default_rng(seed)
        # The counter-based streams (Dropout, stochastic pooling) are keyed by the seed and
        # the net's index; an unseeded run draws its seed once (and snapshots keep it).
        self.random_seed = seed if seed is not None else int(
            np.random.SeedSequence().entropy % 2**63)

        train_param, test_params, net_dir = config.solver_net_params(sp, self.path)
        # Mixed precision is parsed and checked here; running a net in FLOAT16/BFLOAT16
        # (loss-diff seeding with the scale, MasterWeights) is not wired into the loop yet.
        precision = mixed_precision.check_single_precision(train_param)
        if precision.compute != "FLOAT32":
            raise ConfigError(f"{self.path or 'solver'}: net precision {precision.compute} is "
                              "parsed but training in it is not supported yet (FLOAT32 only)")
        self.use_cuda_graph = cuda_graph.wanted(sp, no_graph, backend.mode())
        self.net_dir = net_dir
        base_dirs = (net_dir,) + ((self.path.resolve().parent,) if self.path else ())
        train_state = pb.NetState(phase=pb.TRAIN)
        train_state.MergeFrom(train_param.state)
        train_state.MergeFrom(sp.train_state)
        train_state.level = level or train_state.level
        train_state.stage.extend(s for s in stages if s)
        train_param.state.CopyFrom(train_state)
        self.net = Net(train_param, "train", level=train_state.level,
                       stages=list(train_state.stage), dtype=dtype, rng=self._child_rng(),
                       base_dirs=base_dirs, random_key=philox_key(self.random_seed, 0))
        self.test_nets: list[Net] = []
        for i, test_param in enumerate(test_params):
            param = pb.NetParameter()
            param.CopyFrom(test_param)
            state = pb.NetState(phase=pb.TEST)
            state.MergeFrom(param.state)
            if sp.test_state:
                state.MergeFrom(sp.test_state[i])
            param.state.CopyFrom(state)
            test_net = Net(param, "test", level=state.level, stages=list(state.stage),
                           dtype=dtype, rng=self._child_rng(), base_dirs=base_dirs,
                           random_key=philox_key(self.random_seed, i + 1))
            test_net.share_trained_layers(self.net)
            self.test_nets.append(test_net)

        # Nothing reads the train net's intermediate diffs and activations, nor the test nets'
        # activations: both share memory by liveness (graph/train_memory.py, memory_plan.py).
        # The train net's arena moves its arrays when a pass changes memory: the views the
        # test nets (its weights) and the update rule keep are rebuilt through the solver.
        self.net.plan.hold_arena_views(self)
        self.net.plan.share_diffs(activations=share_activations)
        if recompute_columns:
            with self.net.plan.rearranging():
                train_memory.recompute_columns(self.net.plan)
        for test_net in self.test_nets:
            test_net.plan.share_memory(())
        self.iter = 0
        self.rule = make_update_rule(sp, self.net.learnable_params)
        # Pruning (train/pruning.py sets it): a ParamMasks that keeps pruned weights and
        # their history at exactly 0 through every update; saved in the solverstate.
        self.masks = None
        # Weight sharing (deploy/compress/sharing.py sets it): a ParamClusters whose clusters'
        # weights get their summed gradient, so each stays one centroid; in the solverstate.
        self.clusters = None
        self.snapshots = SnapshotWriter(self)
        self.callbacks: list = []  # (on_start, on_gradients_ready, on_end) triples
        self.want_metrics = metrics
        self.metrics: MetricsWriter | None = None
        self._scalars = _LossScalars(self.net.ctx.xp, max(sp.average_loss, 1))
        self.guard = divergence.Guard(self.net)
        # The update rule's history and scratch and the loss scalars join the arena too.
        self.net.plan.adopt_arena(holders=[self], history=[self.rule, self._scalars])
        self.stop_requested = False
        self.test_results: list[dict] = []  # last test pass: one {name: mean} per test net
        if parallel:  # shard the data, one flat gradient buffer, rank 0's weights
            parallel.attach(self)
            # The parameter diffs are now views of the flat buffer: it joins the arena in
            # their place (the diffs' old pieces are dropped).
            self.net.plan.adopt_arena()

    def _child_rng(self) -> np.random.Generator:
        return np.random.default_rng(self.rng.integers(2**63))

    # -- public API ------------------------------------------------------------------------
    @property
    def smoothed_loss(self) -> float:
        """Caffe's smoothed loss (mean of the last average_loss iterations): a host read."""
        return float(to_host(self._scalars.smoothed))

    @property
    def lr(self) -> float:
        return lr_policies.learning_rate(self.param, self.iter)

    def add_callback(self, on_start=None, on_gradients_ready=None, on_end=None) -> None:
        """Hooks (no arguments) run at the start of each iteration, when its gradients are
        ready (before the update), and at its end (after the update and any snapshot)."""
        self.callbacks.append((on_start, on_gradients_ready, on_end))

    def _open_metrics(self) -> None:
        # Beside the snapshots; a solver built in code with neither a file nor a
        # snapshot_prefix has no such place, and writes none.
        located = self.path is not None or self.param.snapshot_prefix
        if self.want_metrics and self.metrics is None and located:
            path = metrics_path(self.snapshots.prefix)
            self.metrics = MetricsWriter(path, resume_iteration=self.iter if self.iter else None)

    def solve(self, resume_file=None) -> None:
        sp = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", sp.lr_policy)
        self.stop_requested = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self._open_metrics()
        self.step(sp.max_iter - self.iter)
        if sp.snapshot_after_train and (not sp.snapshot or self.iter % sp.snapshot != 0):
            self.snapshot()
        if self.stop_requested:
            log.info("Optimization stopped early.")
            return
        if sp.display and self.iter % sp.display == 0:
            self.net.run_forward(0, len(self.net.plan.steps) - 1)
            self._update_smoothed_loss(self.net.loss_array(), start_iter)
            log.info("Iteration %d, loss = %s", self.iter, _fmt(self.smoothed_loss))
            self._record_train(self._log_outputs(self.net, "Train", quiet=True))
        if sp.test_interval and self.iter % sp.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def step(self, iters: int) -> None:
        # Overflow and NaN are reported by the divergence guard, naming the layer, rather
        # than as numpy warnings scattered through the log.
        # np.errstate is per thread and the batch-split workers compute too, so numpy's
        # RuntimeWarnings are filtered as well (the guard may read its flag iterations
        # after the first overflow: the weights stay put meanwhile, the warnings would not).
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            self._step(iters)
            self.guard.raise_if_diverged(self)  # the host read that ends a step

    def _step(self, iters: int) -> None:
        sp = self.param
        self._open_metrics()
        start_iter = self.iter
        stop_iter = self.iter + iters
        self._scalars.restart()
        timer = time.perf_counter()
        last_display_iter = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (sp.test_interval and self.iter % sp.test_interval == 0
                    and (self.iter > 0 or sp.test_initialization)):
                self.guard.raise_if_diverged(self)
                self.test_all()
                if self.stop_requested:
                    break
            for on_start, _, _ in self.callbacks:
                if on_start:
                    on_start()
            display = sp.display and self.iter % sp.display == 0
            if sp.debug_info:  # Caffe: the per-layer magnitudes on display iterations only
                self.net.debug_info = bool(display)
            loss = self._scalars.iteration_loss
            loss.fill(0)
            last = len(self.net.plan.steps) - 1
            xp = self.net.ctx.xp
            for k in range(sp.iter_size):
                if self.parallel and k == sp.iter_size - 1:  # all-reduce during backward
                    self.parallel.forward_backward(self.net)
                else:
                    self.net.run_forward(0, last)
                    self.net.backward()
                xp.add(loss, self.net.loss_array(), out=loss)
            if sp.iter_size > 1:
                self._scalars.xp.divide(loss, sp.iter_size, out=loss)
            self._update_smoothed_loss(loss, start_iter)
            if display:
                self.guard.raise_if_diverged(self)
                lapse = time.perf_counter() - timer
                per_s = (self.iter - last_display_iter) / (lapse or 1.0)
                log.info("Iteration %d (%s iter/s, %.3fs/%d iters), loss = %s", self.iter,
                         _fmt(per_s), lapse, sp.display, _fmt(self.smoothed_loss))
                timer = time.perf_counter()
                last_display_iter = self.iter
                self._record_train(self._log_outputs(self.net, "Train"))
            for _, on_ready, _ in self.callbacks:
                if on_ready:
                    on_ready()
            # Last look before the weights change, on the device: a NaN/Inf raises the flag,
            # which turns this and every later update into a no-op until it is read.
            self.guard.watch(loss, self.iter)
            self.apply_update(verbose=bool(display))
            if sp.debug_info and display:
                debug_info.emit(debug_info.update_lines(self.net.learnable_params))
            self.iter += 1
            request = self.signals.take() if self.signals else "none"
            if self.parallel:  # any rank's signal stops/snapshots all ranks together
                request = self.parallel.agree(request)
            if (sp.snapshot and self.iter % sp.snapshot == 0) or request == "snapshot":
                self.snapshot()
            for _, _, on_end in self.callbacks:
                if on_end:
                    on_end()
            if request == "stop":
                self.stop_requested = True
                break

    def apply_update(self, verbose: bool = True) -> None:
        rate = self.lr
        if self.param.display and self.iter % self.param.display == 0:
            log.info("Iteration %d, lr = %s", self.iter, _fmt(rate))
        if self.masks is not None:
            self.masks.mask_gradients()
        if self.clusters is not None:
            self.clusters.sum_gradients()
        self.rule.apply(rate, self.iter, skip=self.guard.flag, verbose=verbose)
        if self.masks is not None:
            self.masks.apply(self.rule.history)

    def _update_smoothed_loss(self, loss, start_iter: int) -> None:
        self._scalars.add(loss, (self.iter - start_iter) % self._scalars.average)

    def _log_outputs(self, net: Net, kind: str, values=None, quiet: bool = False) -> dict:
        """``    Train net output #k: name = v (* w = l loss)`` for each output value (unless
        quiet); returns {name: float or list} for the metrics file."""
        weights = {id(top): w for top, w in net.plan.loss_tops}
        index = 0
        logged = {}
        for name in net.outputs:
            blob = net.blobs[name]
            flat = np.ravel(values[name] if values is not None else to_host(blob.data))
            w = weights.get(id(blob), 0.0)
            for v in flat:
                extra = f" (* {_fmt(w)} = {_fmt(w * v)} loss)" if w else ""
                if not quiet:
                    log.info("    %s net output #%d: %s = %s%s", kind, index, name, _fmt(v),
                             extra)
                index += 1
            logged[name] = float(flat[0]) if flat.size == 1 else [float(v) for v in flat]
        return logged

    def _record_train(self, outputs: dict) -> None:
        if self.metrics:
            self.metrics.write({"phase": "train", "iteration": self.iter, "lr": self.lr,
                                "loss": self.smoothed_loss, "outputs": outputs})

    # -- testing ---------------------------------------------------------------------------
    def test_all(self) -> None:
        self.test_results = []
        if self.parallel and not self.parallel.is_root:
            return  # rank 0 alone tests
        for i in range(len(self.test_nets)):
            self.test(i)
            if self.stop_requested:
                return

    def test(self, index: int) -> dict:
        sp = self.param
        net = self.test_nets[index]
        log.info("Iteration %d, Testing net (#%d)", self.iter, index)
        totals: dict[str, np.ndarray] = {}
        loss = 0.0
        n_iter = sp.test_iter[index]
        last = len(net.plan.steps) - 1
        for _ in range(n_iter):
            if self.parallel:
                # A request waits for the ranks' agreement after the iteration; meanwhile
                # rank 0 tells the waiting ranks that it is alive.
                self.parallel.keepalive()
                request = "none"
            else:
                request = self.signals.take() if self.signals else "none"
            while request != "none":
                if request == "snapshot":
                    self.snapshot()
                elif request == "stop":
                    self.stop_requested = True
                request = self.signals.take() if self.signals else "none"
            if self.stop_requested:
                log.info("Test interrupted.")
                return {}
            loss += net.forward_range(0, last)
            add_outputs(net, totals)
        if sp.test_compute_loss:
            log.info("Test loss: %s", _fmt(loss / n_iter))
        means = {name: total / n_iter for name, total in totals.items()}
        result = self._log_outputs(net, "Test", means)
        self.test_results.append(result)
        if self.metrics:
            self.metrics.write({"phase": "test", "iteration": self.iter, "net": index,
                                "outputs": result})
        return result

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self) -> tuple[Path, Path] | None:
        self.guard.raise_if_diverged(self)  # never snapshot past a divergence (every rank)
        if self.parallel and not self.parallel.is_root:
            return None  # rank 0 alone snapshots
        return self.snapshots.write()

    def restore(self, state_file) -> None:
        restore_state(self, state_file)

    def close(self) -> None:
        if self.metrics:
            self.metrics.close()
        self.net.close()
        for net in self.test_nets:
            net.close()


class _LossScalars:
    """The solver's 0-d device scalars: this iteration's loss and Caffe's smoothed loss over
    a ring of the last ``average`` losses, updated by Caffe's formulas in float64 on the
    device (so the figures are the ones a host float would give)."""

    def __init__(self, xp, average: int):
        self.xp = xp
        self.average = average
        self.iteration_loss = xp.zeros((), dtype=xp.float64)
        self.smoothed = xp.zeros((), dtype=xp.float64)
        self.ring = xp.zeros(average, dtype=xp.float64)
        self._delta = xp.zeros((), dtype=xp.float64)
        self.filled = 0

    def restart(self) -> None:
        self.smoothed.fill(0)
        self.filled = 0

    def add(self, loss, index: int) -> None:
        xp, smoothed = self.xp, self.smoothed
        if self.filled < self.average:
            xp.copyto(self.ring[self.filled:self.filled + 1], loss)
            self.filled += 1
            size = self.filled
            xp.multiply(smoothed, size - 1, out=smoothed)  # (s · (size − 1) + loss) / size
            xp.add(smoothed, loss, out=smoothed)
            xp.divide(smoothed, size, out=smoothed)
        else:
            slot = self.ring[index:index + 1]
            xp.subtract(loss, slot.reshape(()), out=self._delta)  # s += (loss − old) / n
            xp.divide(self._delta, self.average, out=self._delta)
            xp.add(smoothed, self._delta, out=smoothed)
            xp.copyto(slot, loss)


def _fmt(value) -> str:
    """Numbers as Caffe's iostreams print them (6 significant digits)."""
    return f"{float(value):.6g}"


def get_solver(path, **kwargs) -> Solver:
    """pycaffe's ``caffe.get_solver``: the solver of the file's ``type``."""
    return Solver(path, **kwargs)
