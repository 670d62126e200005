"""One module per queue; ``steps.job_step`` gives every task the same job bookkeeping."""
