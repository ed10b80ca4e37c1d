"""Step 3, the publisher: submit some tasks (run it while the service runs)."""

from dispatcher.config import setup
from tasks import flaky, hello, nightly_report, too_slow

setup(file_path="dispatcher.yml")
hello.delay("world")
too_slow.delay(5)
nightly_report.apply_async(args=["2026-11"], delay=2)
flaky.delay()
print("submitted 4 tasks; see the service's log")
