"""What benchmarks and tests start for themselves, as real processes: private PostgreSQL clusters and
replicas (``clusters``), PgBouncers (``pgbouncer``), work folders, ports and the service user
(``procs``), the latency-injecting proxy (``proxy``), ``pgfeatures serve`` (``serve``)."""
