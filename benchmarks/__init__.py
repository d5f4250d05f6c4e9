"""Benchmark harness: every hot path of AEPO next to its peers, as a table and a JSON file.

Run ``python -m benchmarks [--quick] [--out FILE.json]`` from a checkout. It measures, in one process
and one run (so that ratios are taken under the same machine load):

* the machine's fp32 matmul peak (GFLOP/s, large square ``torch.mm``) with the chosen threads;
* **training**: updates/s of :class:`~torchrl_aepo.objectives.DiffusionLoss`,
  ``ExpectileLoss`` (+ ``SoftUpdate``), ``AnalyticEnergyLoss`` and the full AEPO update (the
  three losses, their Adam steps and the target update) at batch 256 and 2048 with the
  paper's networks; the ``Gamma(t)`` table estimate;
* **sampling**: guided-sampling actions/s and ms/call of ``AEPOActor`` at batch 1, 50, 800 for
  DPM-Solver++ orders 1/2/3 x 5/10/15 steps;
* **eval**: env-steps/s of a vectorised gymnasium MuJoCo env (wrapped by TorchRL) with the
  actor in the loop;
* **peers**, timed interleaved with ours: TorchRL's ``IQLLoss`` (full update, and its critic
  part alone), ``DiffusionBCLoss`` and ``DiffusionActor`` (DDPM at equal NFE, same noise
  network through an adapter), and the plain-PyTorch research-style reference of
  ``benchmarks/reference_aepo.py`` (with our networks, and with QGPO-shaped networks as the local
  stand-in for the published QGPO code);
* **scaling**: updates/s and sampling vs batch size, network width and number of candidates;
  peak RSS per configuration.

Every figure is also given as a fraction of the measured matmul peak. FLOPs are counted from
parameter counts (``P`` = parameters of a network, biases included): a forward pass costs
``2 P B`` FLOPs for a batch ``B``, a forward + backward ``6 P B``, a forward + input gradient
(no weight gradients) ``4 P B``. Per update: diffusion ``6 P_eps B``; expectile
``8 (P_Q + P_V) B`` (target-Q forward, V forward+backward, V(s') forward, Q forward+backward);
energy ``2 P_eps B + 4 P_Q B + 6 P_f B``; the full update is the sum. Guided sampling costs
``NFE (2 P_eps + 4 P_f) B`` (+ ``2 P_Q B K`` for candidate selection), unguided ``NFE 2 P_eps B``.
These are the algorithmic minimum: recomputation (e.g. a second target-Q pass) is charged to
the implementation as lost efficiency. Non-matmul work (activations, Adam) is not counted.

Timing: each configuration is warmed up, then timed in ``repeats`` rounds, interleaved with the
configurations it is compared to; a round runs the callable until ``min_time`` has passed.
The best round is reported (``ms``), with the median (``ms_median``). Peak RSS: the process's
high-water mark is reset (``/proc/self/clear_refs``) before a configuration's warm-up, which
allocates what it needs; ``rss_peak_mb`` is the process peak during it and ``rss_delta_mb``
the growth over the resident size before it.

Pieces that are not importable (or fail to build) are skipped with the reason in the table
and under ``"skipped"`` in the JSON; the run never fails because of one configuration.

Layout: :mod:`benchmarks.harness` (configuration, timing, FLOP model, matmul peak),
:mod:`benchmarks.cases` (what each section builds), :mod:`benchmarks.report` (ratios,
tables), :mod:`benchmarks.runner` (the command line), ``targets.json`` (QGPO's reference
numbers and the targets, as data) and ``reference_aepo.py`` (the plain-PyTorch reference).
"""
