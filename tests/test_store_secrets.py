"""Secrets and private files (issue 11 items 8, 9 and 15): passwords in storage URLs never appear in a repr, a dump, a
listing or a message; the files that must carry them, and the embedded store itself, are readable by their owner only;
list settings from the environment in the form settings.ini documents."""
import os, stat, subprocess, sys, textwrap
from pathlib import Path
import pytest
from dataops_lab.core import *
from dataops_lab.config import load_settings
from dataops_lab.store.base import Storage

SECRET = 'hunter2-s3cret'

@pytest.fixture
def umask022():
    "The usual umask, so that a mode the code forgets to set would show as group/world-readable"
    old = os.umask(0o022)
    yield
    os.umask(old)

def test_settings_and_storage_never_show_a_password(tmp_path, monkeypatch):
    (tmp_path / 'settings.ini').write_text(f"[storage]\nhot = redis://app:{SECRET}@cache.internal:6379/0\n"
                                           f"blob = s3://bucket/data?region=eu-west-1&aws_secret_access_key={SECRET}\n\n"
                                           f"[llm]\nprovider = openai\napi_key = {SECRET}\nbase_url = https://u:{SECRET}@llm.internal/v1\n")
    monkeypatch.setenv('DATAOPS_STORAGE__COLD', f"dynamodb://eu-west-1?endpoint_url=http://u:{SECRET}@ddb.internal:8000")
    monkeypatch.setenv('DATAOPS_API__JWT_SECRET', SECRET * 3)
    s = load_settings(tmp_path / 'settings.ini')
    assert s.storage.hot == f"redis://app:{SECRET}@cache.internal:6379/0"  # code that needs the value still gets it
    assert s.api.jwt_secret.get_secret_value() == SECRET * 3
    st = Storage(s)
    shown = {'repr(Settings)': repr(s), 'str(Settings)': str(s), 'model_dump()': str(s.model_dump()), 'model_dump_json()': s.model_dump_json(),
             'Settings._repr_markdown_': s._repr_markdown_(), 'repr(section)': repr(s.storage) + repr(s.llm) + repr(s.api),
             'Storage.urls': str(st.urls), 'Storage._repr_markdown_': st._repr_markdown_(), 'repr(Storage.settings)': repr(st.settings)}
    assert {k: SECRET in v for k, v in shown.items()} == {k: False for k in shown}
    assert st.urls['hot'] == 'redis://app:***@cache.internal:6379/0' and s.model_dump()['llm']['base_url'] == 'https://u:***@llm.internal/v1'
    monkeypatch.setenv('DATAOPS_API__PORT', 'not-a-port')
    with pytest.raises(ConfigError) as e: load_settings(tmp_path / 'settings.ini')
    assert 'DATAOPS_API__PORT' in str(e.value) and SECRET not in str(e.value)

def test_the_settings_file_a_kernel_gets_is_private(tmp_path, monkeypatch, umask022):
    "run_notebook writes a settings.ini for its kernel when the settings came from the environment: 0600, never world-readable"
    from dataops_lab.runner import settings_file
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('DATAOPS_SETTINGS', raising=False)
    monkeypatch.setenv('DATAOPS_STORAGE__HOT', f"redis://:{SECRET}@127.0.0.1:6379/0")
    s = load_settings()
    assert s.source is None  # nothing on disk carries the password yet
    folder = tmp_path / 'run'; folder.mkdir()
    (folder / 'settings.ini').write_text('[storage]\n'); os.chmod(folder / 'settings.ini', 0o644)  # one left by an earlier run
    p = settings_file(s, folder)
    assert (oct(stat.S_IMODE(p.stat().st_mode)), SECRET in p.read_text()) == ('0o600', True)  # the kernel needs the password; only we may read it
    assert load_settings(p).storage.hot == s.storage.hot and sorted(x.name for x in folder.iterdir()) == ['settings.ini']

def test_embedded_store_is_readable_by_its_owner_only(tmp_path, monkeypatch, umask022):
    "Sessions, messages, artifacts, snapshots and archives on the embedded default: every folder 0700, every file 0600"
    import datetime as dt
    from dataops_lab.sessions import SessionManager
    from dataops_lab.context import ContextManager
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'settings.ini').write_text('[storage]\n')
    sm = SessionManager(load_settings(tmp_path / 'settings.ini'))
    cm = ContextManager(sm)
    sid = sm.create_session('alice').session_id
    sm.add_message(sid, 'user', 'the quarterly numbers are confidential')
    sm.artifacts.store_artifact('salary,name\n' + '100,x\n' * 2000, session_id=sid, workflow_name='hr_report')
    cm.dump_context(sid); cm.create_checkpoint(sid, 'before')
    sm.cleanup_expired_sessions(now=utcnow() + dt.timedelta(days=30))  # an archive too
    assert sm.storage.blob.exists(f"archives/sessions/{sid}.jsonl.zst")
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / '.dataops').rglob('*')}
    modes['.dataops'] = oct(stat.S_IMODE((tmp_path / '.dataops').stat().st_mode))
    open_to_others = {k: m for k, m in modes.items() if int(m, 8) & 0o077}
    sm.close()
    assert open_to_others == {} and len(modes) >= 10 and any(k.endswith('meta.db') for k in modes)

LIST_SETTINGS = textwrap.dedent("""
    from dataops_lab import SessionManager
    from dataops_lab.config import load_settings
    s = load_settings()
    SessionManager(s).close()
    print(';'.join(s.api.endpoint_limits), ','.join(s.api.cors_origins))
""")

@pytest.mark.parametrize('limits,origins', [('query_session=30/minute, login=5/minute', 'https://a.example,https://b.example'),
                                            ('["query_session=30/minute", "login=5/minute"]', '["https://a.example", "https://b.example"]')])
def test_list_settings_from_the_environment(tmp_path, limits, origins):
    "Comma-separated lists — the form settings.ini documents — and JSON both work in DATAOPS_* variables at every entry point; a bad value is a ConfigError naming it"
    (tmp_path / 'settings.ini').write_text('[storage]\n')
    env = {**os.environ, 'DATAOPS_SETTINGS': str(tmp_path / 'settings.ini'), 'DATAOPS_API__ENDPOINT_LIMITS': limits, 'DATAOPS_API__CORS_ORIGINS': origins}
    lib = subprocess.run([sys.executable, '-c', LIST_SETTINGS], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (lib.returncode, lib.stdout.strip()) == (0, 'query_session=30/minute;login=5/minute https://a.example,https://b.example'), lib.stderr[-2000:]
    cli = Path(sys.executable).parent / 'dataops-lab'
    out = subprocess.run([str(cli), 'settings'], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and 'https://a.example, https://b.example' in out.stdout and 'query_session=30/minute, login=5/minute' in out.stdout, out.stderr[-2000:]
    bad = subprocess.run([str(cli), 'settings'], env={**env, 'DATAOPS_API__CORS_ORIGINS': '["https://a.example",'}, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and 'DATAOPS_API__CORS_ORIGINS' in bad.stderr and 'SettingsError' not in bad.stderr and 'Traceback' not in bad.stderr, bad.stderr[-2000:]
