"""One fake FCM server per test module, its record cleared before each test: shared by the FCM wire tests.

Import `module_fake_fcm` and `fresh_fcm_record` into a test module: they are the fixtures `fake` and (autouse)
`fresh_record` there, registered under those names so the imports do not shadow the tests' arguments.
"""

from collections.abc import Iterator

import pytest

from engine.fakes import FakeFcm


@pytest.fixture(scope="module", name="fake")
def module_fake_fcm() -> Iterator[FakeFcm]:
    with FakeFcm() as server:
        yield server


@pytest.fixture(autouse=True, name="fresh_record")
def fresh_fcm_record(fake: FakeFcm) -> None:
    fake.clear()
