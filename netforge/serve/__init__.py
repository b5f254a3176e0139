"""``netforge serve``: a local web dashboard in the spirit of NVIDIA DIGITS.

workspace.py confines paths and bounds uploads; store.py keeps datasets and jobs in SQLite;
datasets.py converts image folders; networks.py prepares train/deploy nets and solvers;
jobs.py runs ``netforge train`` subprocesses; classify.py runs snapshots on images and on a
dataset's val split; charts.py draws the curves as SVG; app.py is the Starlette app (pages
and the JSON API under /api/); security.py holds the bind and token rules.
"""
