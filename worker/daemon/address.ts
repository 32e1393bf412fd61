// The gRPC address a worker binds and the one it tells the gateway to dial. Pure, so the
// rules (wildcard binds advertise a reachable address, IPv6 literals get brackets) are tested
// without sockets.
import type os from 'node:os';

/** Pure: the host the gateway should dial; wildcards become this machine's first external IPv4. */
export function advertisedHost(bindHost: string, interfaces: NodeJS.Dict<os.NetworkInterfaceInfo[]>): string {
  if (bindHost !== '0.0.0.0' && bindHost !== '::' && bindHost !== '') return bindHost;
  for (const infos of Object.values(interfaces)) {
    const external = infos?.find((i) => i.family === 'IPv4' && !i.internal);
    if (external !== undefined) return external.address;
  }
  return '127.0.0.1';
}

/** Pure: host:port, with brackets around IPv6 literals. */
export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
