"""Slurm-named commands (sbatch, srun, salloc, squeue, sacct, scancel,
sinfo, scontrol, sacctmgr): one translation layer from Slurm's options,
directives, output formats and exit codes onto Crane's."""
