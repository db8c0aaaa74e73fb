"""The documentation: it builds, it covers the code, and every Python example in it runs.

Every fenced ``python`` block of ``docs/*.md`` and ``README.md`` is compiled. Then the blocks
of each page run in order, in one namespace (as a reader would type them), against the
bundled emulator:

- a block whose first line is ``# not executed: <reason>`` is only compiled;
- a block whose first line names a module (``# myproject/mail.py``) becomes that module,
  importable by the blocks after it;
- the ``test_*`` functions and ``unittest.TestCase`` classes a block defines are run, each
  with a fresh emulator (fixtures ``msgraph_emulator`` and ``settings``);
- any other block runs with Django's mail pointed at the emulator; the settings it assigns
  (``MSGRAPH_MAIL``, ``EMAIL_BACKEND``, ``MAILERS``, the legacy ``MSGRAPH_*``) are then put in
  force and must pass msgraph_mail's system checks without a single message. Certificate
  paths that do not exist here are replaced by a certificate made for the test.

Stand-ins: environment variables (``os.environ[...]``, ``env(...)``; a Fernet key for a name
with ENCRYPTION_KEY in it), Celery's ``shared_task`` (runs eagerly), ``azure.identity``, and
the reader's own code (``signup``, ``send_welcome_mail``, ``send_report``, ``addresses``). A
block needing what this Django lacks
(``django.tasks`` before 6.0; ``MAILERS``' ``using=`` and ``mail.mailers`` before 6.1), and
every later block using a name it defines, is only compiled.
"""

from __future__ import annotations

import ast
import base64
import copy
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import types
import unittest
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.test import override_settings

from msgraph_mail import checks, exceptions
from msgraph_mail.auth import AADSTS_HINTS, tokens
from msgraph_mail.conf import LEGACY_SETTINGS, MSGraphMailSettings
from msgraph_mail.emulator import GraphEmulator
from msgraph_mail.resolvers import sender_cache

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
BACKEND = "msgraph_mail.backend.EmailBackend"

#: Fence languages allowed; a bare fence could hide Python from these tests.
LANGUAGES = {"python", "powershell", "console", "sh", "text", "json"}
DIRECTIVES = {"{toctree}", "{include}", "{eval-rst}"}

OPENING = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
NOT_EXECUTED = re.compile(r"^#\s*not executed:\s*\S")
MODULE_LINE = re.compile(r"^#\s*(?P<path>[\w/]+)\.py\s*$")
ENV_NAME = re.compile(
    r"""(?:os\.environ\[\s*|os\.environ\.get\(\s*|getenv\(\s*|\benv\(\s*)["'](\w+)["']"""
)
CONTOSO = re.compile(r"\b[a-z0-9._-]+@contoso\.com\b")
PLACEHOLDER = "docs-placeholder-value"
#: What an environment variable named like ``OUTBOX_ENCRYPTION_KEYS`` holds: a Fernet key.
FERNET_PLACEHOLDER = base64.urlsafe_b64encode(b"docs-placeholder-fernet-key-32b!").decode()
SETTINGS_NAMES = {"EMAIL_BACKEND", "MSGRAPH_MAIL", "MAILERS", *LEGACY_SETTINGS}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the first line of code, 1-based
    language: str
    code: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def first_line(self) -> str:
        return self.code.lstrip().partition("\n")[0].strip()

    def compiled(self) -> types.CodeType:
        """Compiled with the page's line numbers, so a traceback points into the page."""
        return compile("\n" * (self.line - 1) + self.code, str(self.path), "exec")


def fences(path: Path) -> Iterator[Block]:
    """Every fenced block of a markdown page, indented ones (in lists) included."""
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = OPENING.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        index += 1
        while index < len(lines):
            stripped = lines[index].strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                break
            body.append(lines[index][len(indent) :] if lines[index].strip() else "")
            index += 1
        start = index - len(body) + 1
        yield Block(path, start, opening["info"].strip(), "\n".join(body) + "\n")
        index += 1


def python_blocks(path: Path) -> list[Block]:
    return [block for block in fences(path) if block.language == "python"]


ALL_PYTHON = [block for page in PAGES for block in python_blocks(page)]
PAGES_WITH_PYTHON = [page for page in PAGES if python_blocks(page)]


# structure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_fence_names_its_language(page: Path) -> None:
    for block in fences(page):
        info = block.language.split()[0] if block.language else ""
        assert info in LANGUAGES | DIRECTIVES, f"{block}: fence language {info!r}"


@pytest.mark.parametrize("block", ALL_PYTHON, ids=str)
def test_python_blocks_compile(block: Block) -> None:
    block.compiled()
    if NOT_EXECUTED.match(block.first_line):
        return
    assert not block.first_line.startswith("# not executed"), f"{block}: give a reason"


def test_opting_out_stays_rare() -> None:
    skipped = [str(block) for block in ALL_PYTHON if NOT_EXECUTED.match(block.first_line)]
    assert len(skipped) <= 2, skipped


def test_every_settings_key_is_in_the_settings_reference() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", (DOCS / "settings.md").read_text(), re.M))
    keys = {name.upper() for name in MSGraphMailSettings.model_fields}
    assert keys - documented == set()
    assert documented - keys == set()


def test_every_check_is_in_the_generated_table(tmp_path: Path) -> None:
    """Run the generator of docs/conf.py into a scratch directory and read its table."""
    tree = ast.parse((DOCS / "conf.py").read_text())
    [generator] = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "_write_checks_table"
    ]
    namespace: dict[str, Any] = {"Path": Path, "__file__": str(tmp_path / "conf.py")}
    exec(compile(ast.Module([generator], []), "docs/conf.py", "exec"), namespace)  # noqa: S102
    namespace["_write_checks_table"]()
    table = (tmp_path / "_generated" / "checks.md").read_text()
    ids = [
        value.id
        for value in vars(checks).values()
        if isinstance(value, checks.CheckMessage) and value.id
    ]
    assert len(ids) >= 20
    for check_id in ids:
        assert f"`{check_id}`" in table
    assert "_generated/checks.md" in (DOCS / "checks.md").read_text()


def test_every_exception_is_documented() -> None:
    page = (DOCS / "exceptions.md").read_text()
    assert "automodule:: msgraph_mail.exceptions" in page
    rendered = page + (exceptions.__doc__ or "")
    for name in exceptions.__all__:
        assert re.search(rf"\b{name}\b", rendered), name


TROUBLESHOOTING_CODES = [
    "ErrorAccessDenied",
    "ErrorSendAsDenied",
    "MailboxNotEnabledForRESTAPI",
    "ErrorInvalidUser",
    "Request_ResourceNotFound",
    "Authorization_RequestDenied",
    "ErrorInvalidRecipients",
    "ErrorMessageSizeExceeded",
    "413",
    "ErrorQuotaExceeded",
    "InvalidAuthenticationToken",
    "NoPermissionsInAccessToken",
    "TooManyRequests",
    "ApplicationThrottled",
    "serviceNotAvailable",
    "504",
    *(f"AADSTS{code}" for code in (7000215, 7000222, 7000218, 700016, 90002, 700027)),
    *(f"AADSTS{code}" for code in (700024, 70011, 700022, 500011, 50196, 53003, 50059)),
]


def test_troubleshooting_has_a_section_per_error_code() -> None:
    headings = re.findall(r"^###\s+(.+)$", (DOCS / "troubleshooting.md").read_text(), re.M)
    for code in TROUBLESHOOTING_CODES + [f"AADSTS{code}" for code in AADSTS_HINTS]:
        assert any(re.search(rf"\b{code}\b", heading) for heading in headings), code


def test_readme_is_short_and_links_into_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "python -m pip install . && python -m msgraph_mail demo" in readme
    assert "python -m pip install --upgrade nox && nox" in readme
    assert len(readme.splitlines()) <= 100
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert "docs/index.md" in links
    for link in links:
        assert (ROOT / link).is_file(), link


def test_every_page_is_in_the_table_of_contents() -> None:
    index = (DOCS / "index.md").read_text()
    for page in DOCS.glob("*.md"):
        if page.stem != "index":
            assert re.search(rf"^{re.escape(page.stem)}$", index, re.M), page.name


def test_the_documentation_builds_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    pytest.importorskip("furo")
    build_dir = tmp_path / "html"
    build = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, build_dir],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert build.returncode == 0, build.stderr[-3000:]


# running the examples ----------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=lambda page: page.name)
def test_examples_run(
    page: Path, emulator: GraphEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = page.read_text(encoding="utf-8")
    for name in set(ENV_NAME.findall(text)):
        monkeypatch.setenv(name, FERNET_PLACEHOLDER if "ENCRYPTION_KEY" in name else PLACEHOLDER)
    for name, module in stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    users = sorted(set(CONTOSO.findall(text)))
    add_users(emulator, users)
    namespace = reader_namespace()
    skipped: set[str] = set()  # names defined by blocks this Django cannot run
    executed: list[Block] = []
    with ExitStack() as page_settings:
        for block in python_blocks(page):
            if NOT_EXECUTED.match(block.first_line):
                continue
            tree = ast.parse(block.code)
            reason = needs(tree, block.code, skipped)
            if reason is not None:
                skipped |= defined_names(tree)
                print(f"{block}: compiled only on Django {django.__version__}: {reason}")
                continue
            executed.append(block)
            module = MODULE_LINE.match(block.first_line)
            if module is not None and module["path"] != "settings":
                monkeypatch.setitem(sys.modules, *as_module(block, module["path"]))
                continue
            before = dict(namespace)
            exec(block.compiled(), namespace)  # noqa: S102
            assigned = assigned_names(tree)
            check_settings_of(block, namespace, assigned, tmp_path)
            if "MAILERS" in assigned and django.VERSION >= (6, 1):
                page_settings.enter_context(override_settings(MAILERS=namespace["MAILERS"]))
            for name, value in list(namespace.items()):
                if before.get(name) is not value:
                    run_if_test(block, name, value, users)
    assert executed, f"{page.name}: no example ran"
    for value in namespace.values():
        if type(value).__name__ == "TaskResult":  # django.tasks: the task must have succeeded
            assert value.status.name == "SUCCESSFUL", value


def needs(tree: ast.Module, code: str, skipped: set[str]) -> str | None:
    """Why this Django cannot run the block, or None."""
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules = [node.module]
        for module in modules:
            if module.split(".")[0] in {*stand_in_modules(), "myproject"}:
                continue
            if not _importable(module):
                return f"needs {module}"
    if django.VERSION < (6, 1) and re.search(r"\busing=|\bmail\.mailers\b", code):
        return "needs Django 6.1 MAILERS"
    used = free_names(tree)
    if used & skipped:
        return f"uses {', '.join(sorted(used & skipped))} from a block this Django cannot run"
    return None


def _importable(module: str) -> bool:
    """Whether ``module`` can be found (a reader's own ``accounts.models`` cannot)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def defined_names(tree: ast.Module) -> set[str]:
    names = assigned_names(tree)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def free_names(tree: ast.Module) -> set[str]:
    """Names the block reads but defines nowhere in itself."""
    loaded, local = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else local).add(node.id)
        elif isinstance(node, ast.arg):
            local.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            local.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            local |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return loaded - local


def assigned_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def as_module(block: Block, path: str) -> tuple[str, types.ModuleType]:
    """``# myproject/mail.py``: the block becomes module ``myproject.mail``."""
    name = path.replace("/", ".")
    for depth in range(1, name.count(".") + 1):
        package = ".".join(name.split(".")[:depth])
        if package not in sys.modules:
            parent = types.ModuleType(package)
            parent.__path__ = []
            sys.modules[package] = parent  # removed with the module below, by monkeypatch
    module = types.ModuleType(name)
    module.__file__ = str(block.path)
    exec(block.compiled(), module.__dict__)  # noqa: S102
    return name, module


@pytest.fixture(autouse=True)
def _forget_stand_in_packages() -> Iterator[None]:
    yield
    for name in [name for name in sys.modules if name.split(".")[0] == "myproject"]:
        del sys.modules[name]


def check_settings_of(
    block: Block, namespace: dict[str, Any], assigned: set[str], tmp_path: Path
) -> None:
    """Put the settings the block assigned in force; the system checks must find nothing."""
    if "INSTALLED_APPS" in assigned:
        assert "msgraph_mail" in namespace["INSTALLED_APPS"], block
    if not assigned & SETTINGS_NAMES:
        return
    overrides: dict[str, Any] = {
        "EMAIL_BACKEND": BACKEND,
        "MSGRAPH_MAIL": None,
        "MAILERS": {"default": {"BACKEND": BACKEND}} if django.VERSION >= (6, 1) else None,
        **dict.fromkeys(LEGACY_SETTINGS),
    }
    for name in assigned & (SETTINGS_NAMES | {"DEFAULT_FROM_EMAIL", "SERVER_EMAIL"}):
        overrides[name] = with_test_certificate(copy.deepcopy(namespace[name]), tmp_path)
    with override_settings(**overrides):
        found = checks.check_settings() + checks.check_deploy()
    assert found == [], f"{block}: {found}"


def with_test_certificate(value: Any, tmp_path: Path) -> Any:
    """Certificate paths of the examples, replaced by a certificate made here."""
    certificate = value.get("CLIENT_CERTIFICATE") if isinstance(value, dict) else None
    if not certificate or Path(certificate["PRIVATE_KEY"]).exists():
        return value
    from tests.helpers import make_pair

    pair = make_pair(password=certificate.get("PASSWORD"))
    key, cert = tmp_path / "example.key", tmp_path / "example.crt"
    key.write_text(pair.key)
    cert.write_text(pair.cert)
    certificate["PRIVATE_KEY"] = str(key)
    if "CERTIFICATE" in certificate:
        certificate["CERTIFICATE"] = str(cert)
    return value


def run_if_test(block: Block, name: str, value: Any, users: list[str]) -> None:
    """Run a ``test_*`` function or a TestCase defined by the block, with a fresh emulator."""
    if getattr(value, "__module__", None) != "docs_example":
        return  # imported, not defined by the block
    if name.startswith("test_") and inspect.isfunction(value):
        with fresh_emulator(users) as emulator:
            wrapper = SettingsFixture()
            fixtures = {"msgraph_emulator": emulator, "settings": wrapper}
            try:
                value(**{p: fixtures[p] for p in inspect.signature(value).parameters})
            finally:
                wrapper.restore()
    elif inspect.isclass(value) and issubclass(value, unittest.TestCase):
        result = unittest.TestResult()
        with fresh_emulator(users):
            unittest.defaultTestLoader.loadTestsFromTestCase(value).run(result)
        problems = result.errors + result.failures
        assert result.testsRun, block
        assert not problems, f"{block}: {problems}"


class SettingsFixture:
    """What pytest-django's ``settings`` fixture gives a test: assignments undone after it."""

    def __init__(self) -> None:
        object.__setattr__(self, "_overrides", [])

    def __setattr__(self, name: str, value: Any) -> None:
        override = override_settings(**{name: value})
        override.enable()
        self._overrides.append(override)

    def __getattr__(self, name: str) -> Any:
        return getattr(django_settings, name)

    def restore(self) -> None:
        for override in reversed(self._overrides):
            override.disable()


@contextmanager
def fresh_emulator(users: list[str]) -> Iterator[GraphEmulator]:
    """What the ``msgraph_emulator`` fixture gives a test: a new emulator, mail pointed at it."""
    tokens.clear()
    sender_cache.clear()
    with GraphEmulator() as emulator:
        add_users(emulator, users)
        overrides: dict[str, Any] = {"EMAIL_BACKEND": BACKEND, "MSGRAPH_MAIL": emulator.settings()}
        if hasattr(django_settings, "MAILERS"):
            overrides["MAILERS"] = {
                alias: {"BACKEND": BACKEND} for alias in django_settings.MAILERS
            }
        with override_settings(**overrides):
            yield emulator
    tokens.clear()
    sender_cache.clear()


def add_users(emulator: GraphEmulator, addresses: list[str]) -> None:
    """Every contoso.com mailbox the page names exists in the emulated tenant."""
    for address in addresses:
        if emulator.user(address) is None:
            emulator.add_user(address)


# stand-ins -----------------------------------------------------------------------------------


def reader_namespace() -> dict[str, Any]:
    """A settings.py / shell namespace, with the reader's own code stood in for."""

    def signup(address: str) -> None:
        mail.send_mail("Welcome", "Thanks for signing up.", "noreply@contoso.com", [address])

    def send_welcome_mail() -> None:
        signup("new.user@example.com")

    def send_report() -> None:
        report = mail.EmailMessage(
            "Monthly report", "Attached.", "noreply@contoso.com", ["boss@example.com"]
        )
        report.attach("report.pdf", os.urandom(5 * 1024 * 1024), "application/pdf")
        report.send()

    return {
        "__name__": "docs_example",
        "os": os,
        "env": lambda name, default=None: os.environ.get(name, default),
        "INSTALLED_APPS": ["django.contrib.contenttypes"],
        "addresses": ["alice@example.com", "bob@example.com"],
        "signup": signup,
        "send_welcome_mail": send_welcome_mail,
        "send_report": send_report,
    }


class _Retry(Exception):
    """celery.exceptions.Retry: raised by Task.retry()."""


class _EagerTask:
    """A Celery task run at once, as with ``task_always_eager``."""

    def __init__(self, function: Any, bind: bool) -> None:
        self.function = function
        self.bind = bind
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(self, *args, **kwargs) if self.bind else self.function(*args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Any = (), kwargs: Any = None, **options: Any) -> Any:
        self.calls.append((args, kwargs, options))
        return self(*args, **(kwargs or {}))

    def retry(self, exc: BaseException | None = None, **options: Any) -> _Retry:
        return _Retry(exc)


def _shared_task(*args: Any, bind: bool = False, **options: Any) -> Any:
    if args and callable(args[0]):
        return _EagerTask(args[0], bind)
    return lambda function: _EagerTask(function, bind)


class _ManagedIdentityCredential:
    """azure.identity's, never called by the settings examples."""

    def __init__(self, client_id: str | None = None, **kwargs: Any) -> None:
        self.client_id = client_id

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise AssertionError("the documentation's stand-in credential was asked for a token")


def stand_in_modules() -> dict[str, types.ModuleType]:
    celery = types.ModuleType("celery")
    celery.shared_task = _shared_task  # type: ignore[attr-defined]
    azure = types.ModuleType("azure")
    azure.__path__ = []  # type: ignore[attr-defined]
    identity = types.ModuleType("azure.identity")
    identity.ManagedIdentityCredential = _ManagedIdentityCredential  # type: ignore[attr-defined]
    azure.identity = identity  # type: ignore[attr-defined]
    return {"celery": celery, "azure": azure, "azure.identity": identity}
