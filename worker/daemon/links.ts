// Device-to-device links between this worker's pipeline stages and their neighbours (issue 4,
// point 5). LoadStage brings the links' ids (the gateway got each from the sending stage's
// worker through CreateLinkId); both ends open during runtime init, beside the fetch. A link
// that cannot open — a backend without links (CPU), two stages on one GPU, a peer that never
// joins — is logged and left out: that hop's activations then travel in the ForwardActivations
// messages, and every message says which way its hidden states came (Activation.link_tag),
// so both ends agree per message. The gRPC connection to the next stage's worker is made
// during runtime init too (pipeline.ts connectNextStage), so no first request waits for it.
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { BackendName, LinkHandle, NativeAddon } from '../native/addon-types.js';

/**
 * How long runtime init waits for the stage at the other end of a link to join it. Both loads
 * start together and open their ends after creating the device context, so the other end is
 * at most a second or two behind unless it failed (its load is then called off, or it refused
 * the link at once, as NCCL does for two stages on one GPU).
 */
export const LINK_OPEN_TIMEOUT_MS = 10_000;

/** The open ends of an instance's links; null where activations go over gRPC. */
export interface StageLinks {
  toNext: LinkHandle | null;
  fromPrevious: LinkHandle | null;
  /** A client holding the connection to the next stage's worker; null for the last stage or a whole model. */
  nextStage: grpc.Client | null;
}

export const NO_LINKS: Readonly<StageLinks> = Object.freeze({ toNext: null, fromPrevious: null, nextStage: null });

/** LoadStage's link ids; an empty id means no link on that side. */
export interface StageLinkIds {
  linkIdToNext: Buffer;
  linkIdFromPrevious: Buffer;
}

/**
 * Opens the links the ids name, both at once, putting each end into `holder.links` as it opens
 * (whoever frees the holder's device copy closes them, however its load ends); resolves when
 * both attempts are over, never rejects. An end that opens after `signal` aborted (the load was
 * given up) is closed at once instead.
 */
export async function openStageLinks(
  addon: Pick<NativeAddon, 'openLink' | 'closeLink'>,
  backend: BackendName,
  device: number,
  ids: StageLinkIds,
  holder: { links: StageLinks },
  log: Logger,
  signal: AbortSignal,
): Promise<void> {
  const open = async (id: Buffer, sends: boolean): Promise<void> => {
    if (id.length === 0) return;
    const side = sends ? 'to the next stage' : 'from the previous stage';
    let link: LinkHandle;
    try {
      link = await addon.openLink(backend, { device, uniqueId: id, sends, timeoutMs: LINK_OPEN_TIMEOUT_MS });
    } catch (e) {
      log.warn({ err: e instanceof Error ? e.message : String(e) }, `the device link ${side} did not open: its activations go over gRPC`);
      return;
    }
    if (signal.aborted) {
      addon.closeLink(link);
      return;
    }
    holder.links = sends ? { ...holder.links, toNext: link } : { ...holder.links, fromPrevious: link };
    log.info(`device link ${side} is open`);
  };
  await Promise.all([open(ids.linkIdToNext, true), open(ids.linkIdFromPrevious, false)]);
}

export function closeStageLinks(addon: Pick<NativeAddon, 'closeLink'>, links: StageLinks): void {
  if (links.toNext !== null) addon.closeLink(links.toNext);
  if (links.fromPrevious !== null) addon.closeLink(links.fromPrevious);
  links.nextStage?.close();
}

/** Tags of the activations this worker sends over links: unique per worker, never 0 (0 = no link). */
export class LinkTags {
  private last = 0;

  next(): number {
    this.last++;
    return this.last;
  }
}
