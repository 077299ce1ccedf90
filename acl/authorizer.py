"""The access decision for one request: required modes ▸ permissions ▸ allow, 401 or 403.

The same permission computation feeds the ``WAC-Allow`` header, so what a client is told it may
do is exactly what it will be allowed to do.
"""

from __future__ import annotations

from acl.credentials import Credentials
from acl.modes import Mode, Requirement, control, create_in, patch, read, write
from acl.wac import Permissions, Wac
from ldp.accessor import StorageAccessor
from ldp.errors import Forbidden, NotFound, Unauthorized
from ldp.identifiers import PodLocator, is_acl, parent_of

WWW_AUTHENTICATE = 'DPoP algs="ES256 ES384 ES512 RS256 RS384 RS512 PS256 PS384 PS512 EdDSA"'
PUBLIC_PREFIX = "/.well-known/solid"


async def _nearest_existing(accessor: StorageAccessor, pod: str, path: str) -> str:
    """The container that a PUT/PATCH creating ``path`` adds members to (intermediates included)."""
    container = parent_of(path)
    while container is not None and container != "/" and await accessor.get(pod, container) is None:
        container = parent_of(container)
    return container or "/"


async def requirements(
    accessor: StorageAccessor, method: str, pod: str, path: str, inserts_only: bool
) -> list[Requirement]:
    if is_acl(path):
        return [control(path)]
    if method in ("GET", "HEAD"):
        return [read(path)]
    if method == "POST":
        return [create_in(path)]
    if method == "DELETE":
        parent = parent_of(path)
        return [write(path)] + ([write(parent)] if parent is not None else [])
    exists = await accessor.get(pod, path) is not None
    if not exists:
        return [create_in(await _nearest_existing(accessor, pod, path))]
    if method == "PATCH":
        return [patch(path, inserts_only)]
    return [write(path)]


class Authorizer:
    def __init__(self, wac: Wac, accessor: StorageAccessor, locator: PodLocator) -> None:
        self.wac = wac
        self.accessor = accessor
        self.locator = locator
        # Pods found to exist, so that the check costs no read even while writes keep emptying the
        # read cache. Deleting a pod (``pod delete``) bumps the ACL epoch, which empties this set in
        # every process; pods that were not found are asked again, as one may be created any time.
        self._pods: set[str] = set()
        self._pods_epoch: int | None = None

    async def authorize(
        self,
        creds: Credentials,
        method: str,
        pod: str,
        path: str,
        origin: str | None,
        inserts_only: bool = False,
    ) -> Permissions | None:
        """Raise Unauthorized / Forbidden when the request may not proceed; for GET and HEAD return
        the permissions to advertise in ``WAC-Allow``."""
        if method == "OPTIONS" or (path.startswith(PUBLIC_PREFIX) and method in ("GET", "HEAD")):
            return None
        await self.wac.refresh()
        if self._pods_epoch != self.wac.epoch:
            self._pods, self._pods_epoch = set(), self.wac.epoch
        if pod not in self._pods:
            if await self.accessor.get(pod, "/") is None:
                raise NotFound(f"No pod at {self.locator.pod_root(pod)}")
            self._pods.add(pod)
        reqs = await requirements(self.accessor, method, pod, path, inserts_only)
        if not await self.wac.allows(pod, reqs, creds.webid, origin):
            url = self.locator.url(pod, path)
            if creds.webid is None:
                raise Unauthorized(
                    f"Authentication required to {method} {url}",
                    headers={"WWW-Authenticate": WWW_AUTHENTICATE},
                )
            needed = ", ".join(sorted({m.value for r in reqs for m in r.modes}))
            # A refused GET/HEAD still says what the agent may do: an agent holding only acl:Append
            # (a publisher on a topic container) learns it from WAC-Allow, which is how another
            # pod's publish check asks (pod.publish.RemoteTopicCheck); without the header every such
            # answer was inconclusive and a publish the recipient refuses was accepted.
            headers = (
                {"WAC-Allow": (await self.wac.permissions(pod, path, creds.webid, origin)).header()}
                if method in ("GET", "HEAD")
                else None
            )
            raise Forbidden(f"{creds.webid} lacks {needed} access to {url}", headers=headers)
        if method in ("GET", "HEAD"):
            return await self.wac.permissions(pod, path, creds.webid, origin)
        return None


__all__ = ["WWW_AUTHENTICATE", "Authorizer", "Mode", "requirements"]
