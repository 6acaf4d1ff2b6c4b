from hypothesis import settings, HealthCheck
from tests.store.test_model import CloneStoreMachine
T = CloneStoreMachine.TestCase
T.settings = settings(max_examples=int(__import__("os").environ.get("N", "400")), stateful_step_count=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_heavy():
    T("runTest").runTest()
