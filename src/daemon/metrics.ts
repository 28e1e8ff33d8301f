/**
 * The daemon's Prometheus registry: the NBD server reports each request here; pool and volume
 * gauges are read from the array at scrape time (so they are never stale and cost nothing between scrapes).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { JobInfo, JobState, PoolInfo, StorageArrayApi, VolumeInfo } from '../array/types.js';
import type { MetricsSource } from '../api/router.js';

/** Latency buckets from 50 µs (page-cache read) to 10 s (a flush behind a slow disk). */
const NBD_LATENCY_BUCKETS_SECONDS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

export class DaemonMetrics implements MetricsSource {
  readonly registry = new Registry();
  private readonly nbdRequests: Counter<'command' | 'errno'>;
  private readonly nbdBytes: Counter<'command'>;
  private readonly nbdLatency: Histogram<'command'>;

  constructor(array: StorageArrayApi, nbdConnectionCount: () => number) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'thinarray_' });
    this.nbdRequests = new Counter({
      name: 'thinarray_nbd_requests_total',
      help: 'NBD requests answered, by command and errno (0 = success).',
      labelNames: ['command', 'errno'],
      registers,
    });
    this.nbdBytes = new Counter({
      name: 'thinarray_nbd_bytes_total',
      help: 'Payload bytes of NBD requests (read, written, trimmed or zeroed), by command.',
      labelNames: ['command'],
      registers,
    });
    this.nbdLatency = new Histogram({
      name: 'thinarray_nbd_request_duration_seconds',
      help: 'Time from receiving an NBD request to sending its reply.',
      labelNames: ['command'],
      buckets: NBD_LATENCY_BUCKETS_SECONDS,
      registers,
    });
    new Gauge({
      name: 'thinarray_nbd_connections',
      help: 'Open NBD connections.',
      registers,
      collect() {
        this.set(nbdConnectionCount());
      },
    });
    registerPoolGauges(array, registers);
    registerVolumeGauges(array, registers);
    registerJobGauges(array, registers);
  }

  /** Called by the NBD server once per reply. */
  observeRequest(command: string, bytes: number, seconds: number, errno: number): void {
    this.nbdRequests.inc({ command, errno: String(errno) });
    if (bytes > 0) this.nbdBytes.inc({ command }, bytes);
    this.nbdLatency.observe({ command }, seconds);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}

function registerPoolGauges(array: StorageArrayApi, registers: Registry[]): void {
  const poolGauge = (name: string, help: string, read: (pool: PoolInfo) => number): void => {
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read(array.poolShow()));
      },
    });
  };
  poolGauge('thinarray_pool_size_bytes', 'Physical size of the pool.', (pool) => pool.sizeBytes);
  poolGauge('thinarray_pool_used_bytes', 'Pool bytes held by mapped extents.', (pool) => pool.usedBytes);
  poolGauge('thinarray_pool_free_bytes', 'Pool bytes free for allocation.', (pool) => pool.freeBytes);
  poolGauge('thinarray_pool_provisioned_bytes', 'Sum of volume capacities (may exceed the pool: over-commit).', (pool) => pool.provisionedBytes);
}

function registerVolumeGauges(array: StorageArrayApi, registers: Registry[]): void {
  const volumeGauge = (name: string, help: string, read: (volume: VolumeInfo) => number): void => {
    new Gauge({
      name,
      help,
      labelNames: ['volume'],
      registers,
      collect() {
        // Reset first so deleted volumes disappear from the scrape.
        this.reset();
        for (const volume of array.volumeList()) this.set({ volume: volume.name }, read(volume));
      },
    });
  };
  volumeGauge('thinarray_volume_capacity_bytes', 'Volume capacity.', (volume) => volume.capacityBytes);
  volumeGauge('thinarray_volume_allocated_bytes', 'Volume bytes backed by pool extents.', (volume) => volume.allocatedBytes);
}

const JOB_STATES: readonly JobState[] = ['queued', 'running', 'succeeded', 'failed', 'cancelled'];

/** Job counts by state, and progress of each queued or running job (finished ones leave the scrape). */
function registerJobGauges(array: StorageArrayApi, registers: Registry[]): void {
  new Gauge({
    name: 'thinarray_jobs',
    help: 'Jobs kept by the daemon, by state (finished jobs are capped).',
    labelNames: ['state'],
    registers,
    collect() {
      const counts = new Map<JobState, number>(JOB_STATES.map((state) => [state, 0]));
      for (const job of array.jobs.list()) counts.set(job.state, counts.get(job.state)! + 1);
      for (const [state, count] of counts) this.set({ state }, count);
    },
  });
  const jobGauge = (name: string, help: string, read: (job: JobInfo) => number): void => {
    new Gauge({
      name,
      help,
      labelNames: ['job', 'kind'],
      registers,
      collect() {
        this.reset();
        for (const job of array.jobs.list()) {
          if (job.state === 'queued' || job.state === 'running') this.set({ job: job.id, kind: job.kind }, read(job));
        }
      },
    });
  };
  jobGauge('thinarray_job_done_bytes', 'Bytes a queued or running job has done.', (job) => job.progress.doneBytes);
  jobGauge('thinarray_job_total_bytes', 'Bytes a queued or running job has to do (0 while unknown).', (job) => job.progress.totalBytes);
  jobGauge('thinarray_job_rate_bytes_per_second', "A running job's rate over the last seconds.", (job) => job.progress.rateBytesPerSec);
}
