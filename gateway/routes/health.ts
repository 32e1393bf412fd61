// Liveness for load balancers and systemd checks: always 200 while the process serves HTTP,
// with the number of READY workers so a caller can wait for capacity.
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';

const HealthReply = Type.Object({ status: Type.Literal('ok'), workers: Type.Integer() });

export async function healthRoutes(app: FastifyInstance): Promise<void> {
  app.get('/health', { schema: { response: { 200: HealthReply } } }, async () => ({
    status: 'ok' as const,
    workers: app.cluster.countByState().READY,
  }));
}
