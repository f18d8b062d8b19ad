"""Keeps a job's SQL lease alive while training runs, independent of how long one step takes."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from service.leases import renew_lease

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Renews the lease every ``interval_s``; sets :attr:`lost` once another party owns the job."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        owner: str,
        interval_s: float,
        lease_seconds: float,
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self._sessions = sessions
        self._job_id = job_id
        self._owner = owner
        self._interval_s = interval_s
        self._lease_seconds = lease_seconds
        self._stop_event = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval_s):
            try:
                with self._sessions() as session:
                    held = renew_lease(session, self._job_id, self._owner, self._lease_seconds)
            except Exception:  # a transient database error: try again next beat
                log.exception("heartbeat for job %s failed", self._job_id)
                continue
            if not held:
                log.warning("job %s: lease lost; stopping this run", self._job_id)
                self.lost.set()
                return

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=self._interval_s + 5)
