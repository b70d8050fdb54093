"""Issue #12 speed switches, one at a time: training step, DDIM sampling, kNN kernel and the numbers they keep.

    python -m grpose.bench.speed --out speed.json                 # SD1.5-size GRPose on one GPU, about 5 min
    python -m grpose.bench.speed --smoke --out /tmp/speed.json    # tiny model on CPU (the test)

Variants are cumulative, in the order of the list printed; a variant that made things slower is reverted before the
next (channels-last). Each row: median step time, peak memory, MFU (training; FLOPs of the plain step by
torch.utils.flop_counter over the bf16 dense peak), images/s (sampling), and the relative error of the eps prediction
on fixed inputs against the plain bf16 path (``eps_rel_err``; for scale, ``bf16_vs_fp32`` is the plain bf16 path
against fp32). Everything is printed as it comes and the JSON is rewritten after every row, so a failure or the time
budget (``--budget_s``) loses only what was not run.

settings.py: full and smoke settings; recorder.py: rows, JSON, profiles; switches.py: turning switches on and off;
train.py, sample.py, knn.py: the three sections; targets.py: the issue's targets; cli.py: the command.
"""
