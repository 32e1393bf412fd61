// Decorates the app with the scheduler loop (closed by plugins/shutdown.ts).
import { SchedulerLoop, type LoopOptions } from '../scheduler/loop.js';
import { sharedPlugin } from './shared.js';

declare module 'fastify' {
  interface FastifyInstance {
    scheduler: SchedulerLoop;
  }
}

export const schedulerPlugin = sharedPlugin<{ options: LoopOptions }>('paraserve-scheduler', async (app, opts) => {
  app.decorate('scheduler', new SchedulerLoop(app.cluster, app.metrics, app.log.child({ component: 'scheduler' }), opts.options));
});
