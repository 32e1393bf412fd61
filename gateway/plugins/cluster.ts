// Decorates the app with the live cluster state; workers' streams and channels close with it.
import { ClusterState, type ClusterOptions } from '../cluster/cluster-state.js';
import { sharedPlugin } from './shared.js';

declare module 'fastify' {
  interface FastifyInstance {
    cluster: ClusterState;
  }
}

export const clusterPlugin = sharedPlugin<{ options: ClusterOptions }>('paraserve-cluster', async (app, opts) => {
  const cluster = new ClusterState(app.log.child({ component: 'cluster' }), opts.options);
  app.decorate('cluster', cluster);
  app.addHook('onClose', async () => cluster.close());
});
