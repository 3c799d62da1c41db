"""What ships with job-watcher but is not the daemon: the simulated upstream, the webhook receiver, the demo
and a manual clock, for `watcher demo`, `watcher bench` and users' own tests."""
