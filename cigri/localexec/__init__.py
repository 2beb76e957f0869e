"""Local execution of CiGri jobs (the `local` batch type).

Tasks are run by a detached executor daemon (one per state directory) through one
shepherd process per task; all state is in files under the state directory, so tasks
survive a restart of CiGri's daemons and of the executor itself (see `store`)."""
