"""One encounter between a space and a mule: the session state machine, with no I/O at all.

An `Encounter` takes messages and the time, and returns `Action`s. It never reads a clock,
touches a socket or starts a thread; `endpoint.py` routes messages to it and authenticates them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..errors import (
    MalformedMessage,
    MlmuleError,
    ProtocolError,
    ReplayedMessage,
    TransferError,
    UnexpectedMessage,
)
from ..identity import PeerKind
from .actions import Action, Closed, Completed, Deliver, EncounterRef, Failed, Publish
from .config import EndpointStats, ProtocolConfig
from .transfers import IncomingTransfer, OutgoingTransfer
from .wire import (
    Abort,
    Body,
    Bye,
    ChunkFrame,
    Envelope,
    Manifest,
    Mode,
    Nack,
    Offer,
    OfferEntry,
    PayloadKind,
    Request,
    Result,
    Signer,
    SnapshotInfo,
    check_reason,
    encode_control,
    leader_of,
)

Holding = tuple[SnapshotInfo, bytes]
Kinds = frozenset[PayloadKind]
WEIGHTS_ONLY: Kinds = frozenset({PayloadKind.WEIGHTS})


class WantPolicy(Protocol):
    """Decides which of the peer's offered snapshots to fetch.

    `ours` is the weights this side offered for the same context key in this session, if any.
    The encounter has already skipped what it holds or fetched before, what is too large, and
    payload kinds this side does not exchange for the key.
    """

    def wants(self, role: PeerKind, entry: OfferEntry, ours: SnapshotInfo | None) -> bool: ...


class MlMulePolicy:
    """The ML Mule exchange. The follower sends first, the leader merges and trains, and answers.

    The leader (the space in fixed-data mode, the mule in mobile-data mode) fetches the follower's
    snapshot. The follower fetches the leader's answer to its own snapshot, or the leader's
    snapshot outright if it has none for the key. Snapshots of another architecture never merge.

    Knowledge has no leader: each side that exchanges it fetches the other's, whatever its
    family, caches it and distils from it.
    """

    def wants(self, role: PeerKind, entry: OfferEntry, ours: SnapshotInfo | None) -> bool:
        theirs = entry.snapshot
        if theirs is not None and theirs.kind is PayloadKind.KNOWLEDGE:
            return True
        if theirs is None or (ours is not None and ours.arch != theirs.arch):
            return False
        if role is leader_of(entry.mode):
            return entry.in_reply_to is None
        return ours is None or entry.in_reply_to == ours.sha256


class RecentHashes:
    """Hashes of snapshots received, or sent and accepted, lately; the oldest are forgotten."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._hashes: OrderedDict[str, None] = OrderedDict()

    def add(self, sha256: str) -> None:
        self._hashes[sha256] = None
        self._hashes.move_to_end(sha256)
        while len(self._hashes) > self._capacity:
            self._hashes.popitem(last=False)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._hashes


class BufferBudget:
    """Bytes of reassembly buffers an endpoint may hold at once, across its sessions."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size


@dataclass
class Shared:
    """What the encounters of one endpoint share."""

    config: ProtocolConfig
    signer: Signer
    policy: WantPolicy
    stats: EndpointStats
    random_token: Callable[[], str]
    recent: RecentHashes
    buffers: BufferBudget


def check_offer_size(offer: Offer, config: ProtocolConfig) -> None:
    if len(offer.entries) > config.max_entries:
        raise UnexpectedMessage(
            f"an offer of more than {config.max_entries} context keys", reason="too_many_entries"
        )


@dataclass
class _Requested:
    offer: int  # the peer's offer our request answered
    since: float


class Encounter:
    """The state of one session, from one side's point of view.

    `offer`, `reply`, `receive`, `receive_chunk`, `settle`, `tick` and `close` return the actions
    that follow. Messages must already be authenticated: the endpoint does that.
    """

    def __init__(
        self,
        shared: Shared,
        *,
        ref: EncounterRef,
        role: PeerKind,
        topic_out: str,
        modes: dict[str, Mode],
        current: Callable[[str, PayloadKind], Holding | None],
        kinds: Callable[[str], Kinds],
        now: float,
    ) -> None:
        self.ref = ref
        self.role = role
        self.closed = False
        self.modes = modes
        self._shared = shared
        self._config = shared.config
        self._topic_out = topic_out
        self._current = current
        self._kinds = kinds  # the payload kinds this side exchanges for a context key
        self._peer_id = ref.mule if role is PeerKind.SPACE else ref.home
        self._out: list[Action] = []
        self._send_seq = 0
        self._peer_seq = 0
        self._last_heard = now
        self._last_active = now
        self._last_retry = now
        self._retries = 0
        self._offers_sent = 0
        self._unanswered: dict[int, Offer] = {}  # our offers the peer has not answered yet
        self._answers: dict[int, Request] = {}  # our answer to each offer of the peer
        self._ours: dict[str, SnapshotInfo] = {}  # latest weights we offered per context key
        self._knowledge_offered: set[str] = set()  # context keys we offered knowledge for
        self._offered: dict[str, tuple[OfferEntry, bytes]] = {}  # by sha256
        self._theirs: dict[str, OfferEntry] = {}  # the peer's offered snapshots, by sha256
        self._answered_from_current: set[str] = set()  # peer sha256 we answered unfetched
        self._requested: dict[str, _Requested] = {}  # by sha256, until the manifest comes
        self._incoming: dict[str, IncomingTransfer] = {}  # reassembling, by transfer id
        self._unsettled: dict[str, Manifest] = {}  # delivered, verdict pending, by transfer id
        self._verdicts: dict[str, Result] = {}  # sent verdicts by transfer id, to repeat
        self._delivered: set[str] = set()  # sha256
        self._failed: dict[str, str] = {}  # sha256 -> reason; not fetched again this session
        self._outgoing: dict[str, OutgoingTransfer] = {}  # by transfer id
        self._outgoing_by_sha: dict[str, str] = {}
        self._send_queue: list[str] = []  # requested sha256 waiting for a free transfer slot

    # -- the caller's side ----------------------------------------------------------------

    def offer(
        self, holdings: Iterable[tuple[OfferEntry, bytes | None]], now: float
    ) -> list[Action]:
        """Offer snapshots (or say we have none, with a payload of None) for context keys."""
        self._offer(holdings, now)
        return self._flush()

    def _offer(self, holdings: Iterable[tuple[OfferEntry, bytes | None]], now: float) -> None:
        entries: list[OfferEntry] = []
        for entry, payload in holdings:
            entries.append(entry)
            if entry.snapshot is not None and payload is not None:
                self._offered[entry.snapshot.sha256] = (entry, payload)
                if entry.kind is PayloadKind.KNOWLEDGE:
                    self._knowledge_offered.add(entry.context_key)
                else:
                    self._ours[entry.context_key] = entry.snapshot
        self._offers_sent += 1
        offer = Offer(self._offers_sent, tuple(entries))
        self._unanswered[offer.number] = offer
        self._send(offer, now)

    def reply(
        self, snapshot: SnapshotInfo, payload: bytes, in_reply_to: str | None, now: float
    ) -> list[Action]:
        """Offer a new snapshot for a context key of this session, e.g. the result of a merge."""
        mode = self.modes.get(snapshot.context_key)
        if mode is None:
            raise ProtocolError(
                f"{snapshot.context_key} is not part of this encounter", reason="unknown_context"
            )
        entry = OfferEntry(snapshot.context_key, mode, snapshot, in_reply_to)
        return self.offer([(entry, payload)], now)

    def settle(self, transfer: str, accepted: bool, reason: str, now: float) -> list[Action]:
        """Send the verdict on a delivered snapshot. Settling twice changes nothing."""
        manifest = self._unsettled.pop(transfer, None)
        if manifest is None or self.closed:
            return []
        result = Result(transfer, manifest.sha256, accepted, check_reason(reason))
        self._verdicts[transfer] = result
        self._send(result, now)
        return self._flush()

    def close(self, reason: str, now: float, *, tell_peer: bool = True) -> list[Action]:
        """End the session: pending transfers fail with `reason`, the peer gets a `bye`."""
        self._end(reason, now, tell_peer=tell_peer)
        return self._flush()

    def _end(self, reason: str, now: float, *, tell_peer: bool) -> None:
        if self.closed:
            return
        error = ProtocolError(f"the encounter ended: {reason}", reason=check_reason(reason))
        for sha in [*self._requested, *(t.manifest.sha256 for t in self._incoming.values())]:
            self._fail_receiving(sha, error, now, tell_peer=False)
        for outgoing in self._outgoing.values():
            if not outgoing.finished:
                self._fail_sending(outgoing, error, now, tell_peer=False)
        for sha in self._send_queue:
            self._emit_failed(error, sha)
        self._send_queue.clear()
        if tell_peer:
            self._send(Bye(reason), now)
        self.closed = True
        self._out.append(Closed(self.ref, reason))

    def tick(self, now: float) -> list[Action]:
        """Expire what took too long and re-send what the peer seems to have missed."""
        if self.closed:
            return []
        if now - self._last_active >= self._config.session_timeout:
            return self.close("idle_timeout", now)
        self._expire_transfers(now)
        waiting = (
            self._unanswered
            or self._requested
            or self._incoming
            or any(not outgoing.finished for outgoing in self._outgoing.values())
        )
        if waiting and now - max(self._last_heard, self._last_retry) >= self._config.retry_after:
            if self._retries >= self._config.max_retries:
                return self.close("peer_silent", now)
            self._retries += 1
            self._last_retry = now
            self._shared.stats.retries += 1
            self._resend_pending(now)
        return self._flush()

    # -- messages from the peer -----------------------------------------------------------

    def receive(self, envelope: Envelope, now: float) -> list[Action]:
        if self.closed:
            raise UnexpectedMessage("the session is closed", reason="session_closed")
        if envelope.seq <= self._peer_seq:
            raise ReplayedMessage(f"seq {envelope.seq} does not follow {self._peer_seq}")
        self._peer_seq = envelope.seq
        self._heard(now)
        body = envelope.body
        if isinstance(body, Offer):
            self._on_offer(body, now)
        elif isinstance(body, Request):
            self._on_request(body, now)
        elif isinstance(body, Manifest):
            self._on_manifest(body, now)
        elif isinstance(body, Nack):
            self._on_nack(body)
        elif isinstance(body, Result):
            self._on_result(body, now)
        elif isinstance(body, Abort):
            self._on_abort(body, now)
        else:
            self._end(body.reason, now, tell_peer=False)
        return self._flush()

    def receive_chunk(self, frame: ChunkFrame, now: float) -> list[Action]:
        incoming = self._incoming.get(frame.transfer)
        if incoming is None:
            raise UnexpectedMessage(
                f"no transfer {frame.transfer} in progress", reason="unknown_transfer"
            )
        try:
            incoming.accept(frame)
        except TransferError as err:
            if not incoming.over_budget:
                raise  # one bad chunk is dropped; the transfer goes on
            self._fail_receiving(incoming.manifest.sha256, err, now)
            return self._flush()
        self._heard(now)  # only a chunk matching the signed manifest proves the peer is there
        if incoming.complete:
            self._complete(incoming, now)
        return self._flush()

    # -- offers and requests --------------------------------------------------------------

    def _on_offer(self, offer: Offer, now: float) -> None:
        previous = self._answers.get(offer.number)
        if previous is not None:  # our answer was lost: say it again
            self._send(previous, now)
            return
        if len(self._answers) >= self._config.max_offers:
            raise UnexpectedMessage("too many offers in one session", reason="too_many_offers")
        check_offer_size(offer, self._config)
        for entry in offer.entries:
            mode = self.modes.get(entry.context_key)
            if mode is None and self.role is PeerKind.MULE:
                self.modes[entry.context_key] = entry.mode  # the space says which keys and modes
            elif mode is not entry.mode:
                raise MalformedMessage(f"{entry.context_key} in mode {entry.mode} was not offered")
        want: list[str] = []
        for entry in offer.entries:
            if entry.snapshot is not None:
                self._theirs[entry.snapshot.sha256] = entry
                if self._decide(entry, now):
                    want.append(entry.snapshot.sha256)
        answer = Request(offer.number, tuple(want))
        self._answers[offer.number] = answer
        for sha in want:
            self._requested[sha] = _Requested(offer.number, now)
        self._send(answer, now)
        self._offer_knowledge_back(offer, now)

    def _offer_knowledge_back(self, offer: Offer, now: float) -> None:
        """Offer our knowledge for the keys the peer offered knowledge for, once a session.

        Knowledge is only ever offered to a peer that offered some first: that proves it reads
        the `kind` field, which a peer that predates knowledge would refuse whole.
        """
        holdings: list[tuple[OfferEntry, bytes | None]] = []
        for entry in offer.entries:
            key = entry.context_key
            if (
                entry.kind is not PayloadKind.KNOWLEDGE
                or key in self._knowledge_offered
                or PayloadKind.KNOWLEDGE not in self._kinds(key)
            ):
                continue
            held = self._current(key, PayloadKind.KNOWLEDGE)
            if held is not None:
                snapshot, payload = held
                holdings.append((OfferEntry(key, entry.mode, snapshot), payload))
        if holdings:
            self._offer(holdings, now)

    def _decide(self, entry: OfferEntry, now: float) -> bool:
        theirs = entry.snapshot
        assert theirs is not None
        sha = theirs.sha256
        seen = (
            sha in self._requested
            or sha in self._delivered
            or sha in self._failed
            or sha in self._offered
            or sha in self._answered_from_current
            or any(incoming.manifest.sha256 == sha for incoming in self._incoming.values())
        )
        if (
            seen
            or theirs.size > self._config.max_payload
            or theirs.kind not in self._kinds(entry.context_key)
        ):
            return False
        if sha in self._shared.recent:
            # Fetched in an earlier encounter: as the leader, answer with what we hold now.
            if self.role is leader_of(entry.mode) and theirs.kind is PayloadKind.WEIGHTS:
                self._answer_from_current(entry, now)
            return False
        return self._shared.policy.wants(self.role, entry, self._ours.get(entry.context_key))

    def _answer_from_current(self, entry: OfferEntry, now: float) -> None:
        assert entry.snapshot is not None
        self._answered_from_current.add(entry.snapshot.sha256)
        held = self._current(entry.context_key, PayloadKind.WEIGHTS)
        if held is not None and held[0].sha256 != entry.snapshot.sha256:
            snapshot, payload = held
            answer = OfferEntry(entry.context_key, entry.mode, snapshot, entry.snapshot.sha256)
            self._offers_sent += 1
            offer = Offer(self._offers_sent, (answer,))
            self._offered[snapshot.sha256] = (answer, payload)
            self._ours[entry.context_key] = snapshot
            self._unanswered[offer.number] = offer
            self._send(offer, now)

    def _on_request(self, request: Request, now: float) -> None:
        self._unanswered.pop(request.offer, None)
        for sha in request.want:
            if sha not in self._offered:
                self._send(Abort(None, sha, "not_offered"), now)
                continue
            transfer = self._outgoing_by_sha.get(sha)
            if transfer is not None:
                outgoing = self._outgoing[transfer]
                if not outgoing.finished:  # they lost the manifest; chunks follow their nack
                    self._send(outgoing.manifest, now)
            elif sha not in self._send_queue:
                self._send_queue.append(sha)
        self._start_transfers(now)

    # -- sending a snapshot ---------------------------------------------------------------

    def _start_transfers(self, now: float) -> None:
        active = sum(not outgoing.finished for outgoing in self._outgoing.values())
        while self._send_queue and active < self._config.max_transfers:
            sha = self._send_queue.pop(0)
            entry, payload = self._offered[sha]
            assert entry.snapshot is not None
            outgoing = OutgoingTransfer(
                self._shared.random_token(), entry.snapshot, payload, self._config.chunk_size, now
            )
            self._outgoing[outgoing.transfer] = outgoing
            self._outgoing_by_sha[sha] = outgoing.transfer
            active += 1
            self._send(outgoing.manifest, now)
            self._publish_chunks(outgoing, range(outgoing.manifest.total))

    def _on_nack(self, nack: Nack) -> None:
        outgoing = self._outgoing.get(nack.transfer)
        if outgoing is None:
            raise UnexpectedMessage(
                f"a nack for unknown transfer {nack.transfer}", reason="unknown_transfer"
            )
        if outgoing.finished:
            return
        if any(index >= outgoing.manifest.total for index in nack.missing):
            raise MalformedMessage("a nack names chunks beyond the transfer")
        self._publish_chunks(outgoing, nack.missing)
        self._shared.stats.chunks_resent += len(nack.missing)

    def _on_result(self, result: Result, now: float) -> None:
        outgoing = self._outgoing.get(result.transfer)
        if outgoing is None or outgoing.finished:
            return  # a repeated verdict
        if result.sha256 != outgoing.snapshot.sha256:
            raise MalformedMessage("a verdict on another snapshot than the transfer's")
        outgoing.finish()
        if result.accepted:  # the peer holds it now: never fetch it back from them
            self._shared.recent.add(result.sha256)
        self._shared.stats.transfers_completed += 1
        self._out.append(
            Completed(self.ref, result.transfer, outgoing.snapshot, result.accepted, result.reason)
        )
        self._start_transfers(now)

    # -- receiving a snapshot -------------------------------------------------------------

    def _on_manifest(self, manifest: Manifest, now: float) -> None:
        transfer = manifest.transfer
        if transfer in self._incoming:  # the sender is checking on us: say what is missing
            self._send_nack(transfer, self._incoming[transfer].missing(), now)
            return
        if transfer in self._unsettled:  # everything arrived; the verdict is being decided
            self._send_nack(transfer, (), now)
            return
        if transfer in self._verdicts:
            self._send(self._verdicts[transfer], now)
            return
        sha = manifest.sha256
        if sha in self._failed:
            self._send(Abort(transfer, sha, self._failed[sha]), now)
            return
        if sha not in self._requested:
            raise UnexpectedMessage(
                f"a manifest for {sha}, which was not requested", reason="not_requested"
            )
        snapshot = self._theirs[sha].snapshot
        assert snapshot is not None
        problem = self._manifest_problem(manifest, snapshot)
        if problem is not None:
            self._fail_receiving(sha, problem, now, transfer=transfer)
            return
        del self._requested[sha]
        self._incoming[transfer] = IncomingTransfer(manifest, snapshot, now)

    def _manifest_problem(self, manifest: Manifest, snapshot: SnapshotInfo) -> TransferError | None:
        config = self._config
        problem: tuple[str, str] | None = None
        if manifest.size > config.max_payload:
            problem = f"{manifest.size} bytes exceed {config.max_payload}", "too_large"
        elif manifest.size != snapshot.size:
            problem = (
                f"the manifest says {manifest.size} bytes, the offer {snapshot.size}",
                ("size_mismatch"),
            )
        elif manifest.total != math.ceil(manifest.size / manifest.chunk_size):
            problem = f"{manifest.total} chunks of {manifest.chunk_size} bytes", "wrong_total"
        elif manifest.total > config.max_chunks:
            problem = f"{manifest.total} chunks exceed {config.max_chunks}", "too_many_chunks"
        elif len(self._incoming) >= config.max_transfers:
            problem = "too many transfers at once", "busy"
        elif not self._shared.buffers.reserve(manifest.size):
            problem = "no room to buffer another transfer", "busy"
        return None if problem is None else TransferError(problem[0], reason=problem[1])

    def _complete(self, incoming: IncomingTransfer, now: float) -> None:
        transfer, sha = incoming.manifest.transfer, incoming.manifest.sha256
        del self._incoming[transfer]
        self._shared.buffers.release(incoming.manifest.size)
        try:
            payload = incoming.take()
        except TransferError as err:
            self._fail_receiving(sha, err, now, transfer=transfer)
            return
        entry = self._theirs[sha]
        self._unsettled[transfer] = incoming.manifest
        self._delivered.add(sha)
        self._shared.recent.add(sha)
        self._shared.stats.transfers_delivered += 1
        self._out.append(
            Deliver(self.ref, transfer, entry.mode, incoming.snapshot, entry.in_reply_to, payload)
        )

    # -- failures and timers --------------------------------------------------------------

    def _on_abort(self, abort: Abort, now: float) -> None:
        error = TransferError(f"the peer gave up: {abort.reason}", reason=abort.reason)
        outgoing = self._outgoing.get(abort.transfer) if abort.transfer is not None else None
        if outgoing is not None and outgoing.snapshot.sha256 == abort.sha256:
            if not outgoing.finished:
                self._fail_sending(outgoing, error, now, tell_peer=False)
                self._start_transfers(now)
        elif abort.sha256 in self._send_queue:
            self._send_queue.remove(abort.sha256)
            self._emit_failed(error, abort.sha256)
        elif abort.sha256 in self._requested or any(
            incoming.manifest.sha256 == abort.sha256 for incoming in self._incoming.values()
        ):
            self._fail_receiving(abort.sha256, error, now, tell_peer=False)

    def _fail_receiving(
        self,
        sha: str,
        error: MlmuleError,
        now: float,
        *,
        transfer: str | None = None,
        tell_peer: bool = True,
    ) -> None:
        """Give up fetching `sha`: free its buffer, remember why, tell the peer and the caller."""
        self._requested.pop(sha, None)
        for transfer_id, incoming in list(self._incoming.items()):
            if incoming.manifest.sha256 == sha:
                del self._incoming[transfer_id]
                self._shared.buffers.release(incoming.manifest.size)
                transfer = transfer_id
        self._failed[sha] = error.reason
        if tell_peer:
            self._send(Abort(transfer, sha, error.reason), now)
        self._emit_failed(error, sha)

    def _fail_sending(
        self, outgoing: OutgoingTransfer, error: MlmuleError, now: float, *, tell_peer: bool
    ) -> None:
        outgoing.finish()
        if tell_peer:
            self._send(Abort(outgoing.transfer, outgoing.snapshot.sha256, error.reason), now)
        self._emit_failed(error, outgoing.snapshot.sha256)

    def _emit_failed(self, error: MlmuleError, sha: str) -> None:
        self._shared.stats.transfers_failed += 1
        entry = self._theirs.get(sha) or self._offered.get(sha, (None, b""))[0]
        context_key = entry.context_key if entry is not None else None
        self._out.append(Failed(self.ref, error, sha, context_key))

    def _expire_transfers(self, now: float) -> None:
        limit = self._config.transfer_timeout
        timeout = TransferError(f"no verdict within {limit:g} s", reason="timeout")
        for sha, requested in list(self._requested.items()):
            if now - requested.since >= limit:
                self._fail_receiving(sha, timeout, now)
        for incoming in list(self._incoming.values()):
            if now - incoming.started_at >= limit:
                self._fail_receiving(incoming.manifest.sha256, timeout, now)
        expired = False
        for outgoing in self._outgoing.values():
            if not outgoing.finished and now - outgoing.started_at >= limit:
                self._fail_sending(outgoing, timeout, now, tell_peer=True)
                expired = True
        if expired:
            self._start_transfers(now)

    def _resend_pending(self, now: float) -> None:
        for offer in self._unanswered.values():
            self._send(offer, now)
        by_offer: dict[int, list[str]] = {}
        for sha, requested in self._requested.items():
            by_offer.setdefault(requested.offer, []).append(sha)
        for number, shas in by_offer.items():
            self._send(Request(number, tuple(shas)), now)
        for transfer, incoming in self._incoming.items():
            self._send_nack(transfer, incoming.missing(), now)
        for outgoing in self._outgoing.values():
            if not outgoing.finished:
                self._send(outgoing.manifest, now)

    # -- output ---------------------------------------------------------------------------

    def _heard(self, now: float) -> None:
        self._last_heard = now
        self._last_active = now
        self._retries = 0

    def _send_nack(self, transfer: str, missing: tuple[int, ...], now: float) -> None:
        self._shared.stats.nacks_sent += 1
        self._send(Nack(transfer, missing), now)

    def _send(self, body: Body, now: float) -> None:
        self._send_seq += 1
        self._last_active = max(self._last_active, now)
        envelope = Envelope(
            session=self.ref.session,
            sender=self._shared.signer.id,
            recipient=self._peer_id,
            space=self.ref.space,
            seq=self._send_seq,
            sent_at_ms=int(now * 1000),
            body=body,
        )
        self._publish(encode_control(envelope, self._shared.signer))
        self._shared.stats.messages_sent += 1

    def _publish_chunks(self, outgoing: OutgoingTransfer, indices: Iterable[int]) -> None:
        for index in indices:
            self._publish(outgoing.frame(index))
            self._shared.stats.chunks_sent += 1

    def _publish(self, payload: bytes) -> None:
        self._shared.stats.bytes_sent += len(payload)
        self._out.append(Publish(self._topic_out, payload))

    def _flush(self) -> list[Action]:
        actions, self._out = self._out, []
        return actions
