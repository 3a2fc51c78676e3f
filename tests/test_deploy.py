"""The deployment files (Dockerfile, deploy/compose.yaml, deploy/k8s/) checked as far as this machine can without Docker or a cluster:
the image's Python environment is built the way the Dockerfile builds it (same script, same locked requirements, a fresh venv) and
serves the API on real Redis + PostgreSQL + S3 servers with the settings and secret files compose gives it; the compose and
Kubernetes files are validated offline against their schemas (shipped in deploy/schemas/ and in the kubernetes-validate package);
every DATAOPS_* setting they use exists in `dataops_lab.config.Settings` and validates."""
import json, os, re, shlex, shutil, signal, subprocess, sys, tomllib, uuid
from pathlib import Path
import httpx, pytest, yaml
from packaging.requirements import Requirement
from servers import RedisServer, PostgresServer, free_port, wait_for
from dataops_lab.config import Settings, SECTIONS, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY, K8S = ROOT / 'deploy', ROOT / 'deploy' / 'k8s'
K8S_VERSIONS = ('1.29.0', '1.37.0')  # the oldest Kubernetes the manifests promise (deploy/README.md) and the newest schema shipped

# ---------------------------------------------------------------- reading the files

def dockerfile_stages(path: Path = ROOT / 'Dockerfile') -> list[dict]:
    "The Dockerfile's stages: each {'from', 'name', 'instructions': [(INSTRUCTION, arguments)]} (continuations joined, comments dropped)"
    text = re.sub(r'\\\n', ' ', path.read_text())
    stages, args = [], {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith('#'): continue
        ins, _, rest = line.partition(' ')
        ins, rest = ins.upper(), ' '.join(rest.split())
        if ins == 'ARG' and not stages:
            k, _, v = rest.partition('='); args[k] = v; continue
        if ins == 'FROM':
            img, _, name = rest.partition(' AS ')
            for k, v in args.items(): img = img.replace('${' + k + '}', v)
            stages.append({'from': img, 'name': name.strip(), 'instructions': []})
        else: stages[-1]['instructions'].append((ins, rest))
    return stages

def docker_env(stage: dict) -> dict[str, str]:
    "ENV of a stage as a dict (the `ENV K=V K2=V2` form)"
    env = {}
    for ins, rest in stage['instructions']:
        if ins == 'ENV':
            for kv in shlex.split(rest):
                k, _, v = kv.partition('='); env[k] = v
    return env

def compose() -> dict: return yaml.safe_load((DEPLOY / 'compose.yaml').read_text())
def k8s_docs() -> list[tuple[str, dict]]:
    return [(f.name, d) for f in sorted(K8S.glob('*.yaml')) if f.name != 'kustomization.yaml' for d in yaml.safe_load_all(f.read_text()) if d]

def setting_of(name: str) -> tuple[str, str]:
    "The (section, key) a DATAOPS_<SECTION>__<KEY>[_FILE] variable sets; AssertionError if Settings has no such key"
    m = re.fullmatch(r'DATAOPS_([A-Z]+)__([A-Z0-9_]+)', name)
    assert m, f"{name} is not of the form DATAOPS_<SECTION>__<KEY>"
    sec, key = m[1].lower(), m[2].lower()
    assert sec in SECTIONS, f"{name}: no section [{sec}] in dataops_lab.config.Settings"
    fields = Settings.model_fields[sec].annotation.model_fields
    if key not in fields and key.endswith('_file') and key.removesuffix('_file') in fields: key = key.removesuffix('_file')
    assert key in fields, f"{name}: [{sec}] has no key {key!r} (keys: {', '.join(fields)})"
    return sec, key

def make_secrets(folder: Path) -> Path:
    subprocess.run(['sh', str(DEPLOY / 'make-secrets.sh'), str(folder)], check=True, capture_output=True)
    return folder

def check_settings(env: dict[str, str], secrets_dir: Path, mount: str, tmp: Path):
    "Every DATAOPS_* variable of `env` names a setting, and together they validate (secret files read from `secrets_dir`)"
    dataops = {k: v for k, v in env.items() if k.startswith('DATAOPS_')}
    assert dataops, "no DATAOPS_* settings found"
    for k in dataops: setting_of(k)
    local = {k: v.replace(mount, str(secrets_dir) + '/') for k, v in dataops.items()}
    for k, v in local.items():
        if k.endswith('_FILE'): assert Path(v).is_file(), f"{k} = {dataops[k]}: deploy/make-secrets.sh writes no such secret"
    ini = tmp / 'empty' / 'settings.ini'; ini.parent.mkdir(exist_ok=True); ini.write_text('')
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith('DATAOPS_')}
    os.environ.update(local)
    try: return load_settings(ini)
    finally:
        for k in local: os.environ.pop(k, None)
        os.environ.update(saved)

# ---------------------------------------------------------------- the Dockerfile and the locked requirements

def test_dockerfile_builds_in_two_stages_and_runs_unprivileged():
    build, run = dockerfile_stages()[-2:]
    assert run['from'].endswith('-slim') and build['from'].endswith('-slim'), (build['from'], run['from'])
    assert [i for i in run['instructions'] if i[0] == 'RUN' and re.search(r'apt-get install|pip install|gcc|build-essential', i[1])] == []
    assert [r for i, r in run['instructions'] if i == 'COPY'] == [f"--from={build['name']} /opt/venv /opt/venv"]
    user = [r for i, r in run['instructions'] if i == 'USER']
    assert user and user[-1].split(':')[0] not in ('0', 'root'), user
    hc = [r for i, r in run['instructions'] if i == 'HEALTHCHECK']
    assert len(hc) == 1 and '/health' in hc[0], hc
    assert json.loads(dict(run['instructions'])['CMD']) == ['dataops-lab', 'serve']
    # the venv is built by deploy/install-venv.sh only (the test below runs the same two steps)
    assert [r for i, r in build['instructions'] if i == 'RUN' and 'install-venv' in r] == ['sh deploy/install-venv.sh /opt/venv', 'sh deploy/install-venv.sh /opt/venv /src']
    # every file the build copies is let through .dockerignore
    allowed = {l[1:].rstrip('/') for l in (ROOT / '.dockerignore').read_text().splitlines() if l.startswith('!')}
    for i, r in build['instructions']:
        if i == 'COPY':
            for src in r.split()[:-1]: assert src.rstrip('/') in allowed, f"COPY {src}: excluded by .dockerignore"

def test_locked_requirements_satisfy_pyproject():
    "deploy/requirements.txt pins a version of every requirement of dataops-lab[postgres] that the requirement accepts"
    pins = {}
    for line in (DEPLOY / 'requirements.txt').read_text().splitlines():
        if line.strip() and not line.startswith('#'):
            r = Requirement(line); (spec,) = r.specifier
            assert spec.operator == '==', f"{line}: not pinned"
            pins[re.sub(r'[-_.]+', '-', r.name).lower()] = spec.version
    proj = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    for line in proj['dependencies'] + proj['optional-dependencies']['postgres']:
        r = Requirement(line)
        name = re.sub(r'[-_.]+', '-', r.name).lower()
        assert name in pins, f"{line}: not in deploy/requirements.txt; regenerate it (its header says how)"
        assert r.specifier.contains(pins[name], prereleases=True), f"{line}: deploy/requirements.txt pins {pins[name]}"

@pytest.fixture(scope='module')
def image_venv(tmp_path_factory):
    """The image's Python environment: the build stage's COPY sources copied into a fresh folder (as `docker build` sends
    them) and its two `install-venv.sh` steps run there with /opt/venv and /src moved into the temp folder.
    The image sets PIP_NO_CACHE_DIR; here pip's cache is reused, so the same packages install fast"""
    tmp = tmp_path_factory.mktemp('image')
    build = dockerfile_stages()[-2]
    src, venv = tmp / 'src', tmp / 'venv'
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PIP_NO_CACHE', 'VIRTUAL_ENV', 'PYTHON'))}
    env['PATH'] = os.pathsep.join(p for p in env['PATH'].split(os.pathsep) if not p.startswith(str(ROOT)))  # not this checkout's venv
    workdir = src
    for ins, rest in build['instructions']:
        if ins == 'WORKDIR': workdir = Path(str(src) + rest.removeprefix('/src')) if rest.startswith('/src') else Path(rest)
        elif ins == 'COPY':
            *sources, dest = rest.split()
            for s in sources:
                target = workdir / dest / (Path(s).name if dest.endswith('/') and not s.endswith('/') else '')
                if s.endswith('/'): shutil.copytree(ROOT / s, target, ignore=shutil.ignore_patterns('__pycache__'))
                else: target.parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / s, target)
        elif ins == 'RUN' and 'install-venv' in rest:
            cmd = rest.replace('/opt/venv', str(venv)).replace('/src', str(src))
            r = subprocess.run(['sh', '-c', cmd], cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)
            assert r.returncode == 0, f"{rest} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert (venv / 'bin' / 'dataops-lab').exists()
    return venv

def test_image_environment_serves_the_api_on_the_compose_settings(image_venv, moto_server, tmp_path):
    """The venv built like the image's, given the api service's settings and secrets from deploy/compose.yaml (host names pointed
    at servers on loopback): the init service's command provisions storage and the first admin, `dataops-lab serve` answers
    /health and /ready with 200, the admin signs in with the password from its secret file, and the HEALTHCHECK command passes"""
    venv = image_venv
    out = subprocess.run([venv / 'bin' / 'python', '-c', 'import dataops_lab, psycopg; print(dataops_lab.__file__)'], cwd=tmp_path,
                         env={'PATH': '/usr/bin:/bin', 'HOME': str(tmp_path)}, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().startswith(str(venv)), out  # the package installed in the venv, not this checkout
    secrets = make_secrets(tmp_path / 'secrets')
    pw = lambda name: (secrets / name).read_text().strip()
    redis = RedisServer(requirepass=pw('redis_password')).start()
    pg = PostgresServer(password=pw('postgres_password'), settings={'fsync': 'off'}).start()
    try:
        # the URL secrets with the compose host names (redis, postgres) replaced by the loopback servers, same passwords
        (secrets / 'redis_url').write_text(pw('redis_url').replace('@redis:6379', f'@127.0.0.1:{redis.port}') + '\n')
        (secrets / 'postgres_url').write_text(pw('postgres_url').replace('@postgres:5432/dataops', f'@127.0.0.1:{pg.port}/postgres') + '\n')
        c, stage = compose(), dockerfile_stages()[-1]
        work, port, bucket = tmp_path / 'work', free_port(), f"dl-{uuid.uuid4().hex[:10]}"
        work.mkdir()
        def local(v: str) -> str:
            return (v.replace('/run/secrets/', f'{secrets}/').replace('/var/lib/dataops-lab', str(work))
                     .replace('http://s3:9000', moto_server.endpoint).replace('s3://dataops-lab/', f's3://{bucket}/'))
        env = {'PATH': f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", 'HOME': str(work), 'LANG': 'C.UTF-8'}
        env.update({k: local(v.replace('$PATH', '')) for k, v in docker_env(stage).items() if k != 'PATH'})
        env.update({k: local(str(v)) for k, v in c['services']['api']['environment'].items()})
        env['DATAOPS_API__PORT'] = str(port)
        assert env['DATAOPS_API__HOST'] == '0.0.0.0' and env['DATAOPS_API__WORKERS'] == '2'
        env['DATAOPS_API__HOST'] = '127.0.0.1'  # the container's 0.0.0.0, kept to loopback here
        init = c['services']['init']['command']
        r = subprocess.run([local(x) for x in init], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"init failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-3000:]}"
        assert 'added admin (admin)' in r.stdout and 'ok: every backend is reachable' in r.stdout, r.stdout
        assert pw('admin_password') not in r.stdout + r.stderr and pw('postgres_password') not in r.stdout + r.stderr
        log = open(tmp_path / 'serve.log', 'wb')
        proc = subprocess.Popen(c['services']['api']['command'], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            def up():
                if proc.poll() is not None: return True
                try: return httpx.get(f"{url}/health", timeout=1).status_code == 200
                except httpx.HTTPError: return False
            try: wait_for(up, 120, 'dataops-lab serve')
            except RuntimeError as e: raise AssertionError(f"{e}:\n{(tmp_path / 'serve.log').read_text()[-3000:]}") from None
            assert proc.poll() is None, (tmp_path / 'serve.log').read_text()[-3000:]
            assert httpx.get(f"{url}/health").json() == {'status': 'ok', 'checks': {}}
            ready = httpx.get(f"{url}/ready")
            assert (ready.status_code, ready.json()) == (200, {'status': 'ok', 'checks': {'hot': 'ok', 'cold': 'ok', 'blob': 'ok'}})
            tok = httpx.post(f"{url}/auth/token", json={'username': 'admin', 'password': pw('admin_password')})
            assert tok.status_code == 200, tok.text
            me = httpx.get(f"{url}/auth/me", headers={'Authorization': f"Bearer {tok.json()['access_token']}"})
            assert (me.status_code, me.json()['user_id'], me.json()['role']) == (200, 'admin', 'admin')
            hc = json.loads(dict(stage['instructions'])['HEALTHCHECK'].split(' CMD ', 1)[1])
            assert subprocess.run(hc, env=env, timeout=30).returncode == 0
            # the same probe fails when nothing serves /health (so it is not always true)
            assert subprocess.run(hc, env={**env, 'DATAOPS_API__PORT': str(free_port())}, capture_output=True, timeout=30).returncode != 0
            # the server's log has no secret in it
            text = (tmp_path / 'serve.log').read_text()
            for name in ('redis_password', 'postgres_password', 'jwt_secret', 'admin_password', 's3_secret_key'): assert pw(name) not in text, name
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try: proc.wait(30)
                except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(10)
            log.close()
    finally:
        redis.stop(); pg.cleanup()

# ---------------------------------------------------------------- compose

def test_compose_file_is_valid_against_the_compose_schema(tmp_path):
    "check-jsonschema with the Compose Specification's schema shipped in deploy/schemas (nothing downloaded)"
    cmd = [sys.executable, '-m', 'check_jsonschema', '--schemafile', str(DEPLOY / 'schemas' / 'compose-spec.json')]
    r = subprocess.run([*cmd, str(DEPLOY / 'compose.yaml')], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = tmp_path / 'compose.yaml'
    broken.write_text((DEPLOY / 'compose.yaml').read_text().replace('    command: ["redis-server"', '    comand: ["redis-server"'))
    r = subprocess.run([*cmd, str(broken)], capture_output=True, text=True)
    assert r.returncode == 1 and "services.redis: 'comand' does not match" in r.stdout, r.stdout + r.stderr

def test_compose_services_secrets_and_settings_fit_together(tmp_path):
    c = compose()
    svc = c['services']
    assert {'api', 'redis', 'postgres', 's3', 'dask-scheduler', 'dask-worker'} <= set(svc)
    assert svc['api']['deploy']['replicas'] == 2
    for name, s in svc.items():
        for dep in s.get('depends_on', {}): assert dep in svc, f"{name} depends on unknown service {dep}"
        for sec in s.get('secrets', []): assert sec in c['secrets'], f"{name} uses undeclared secret {sec}"
        env = {k: str(v) for k, v in (s.get('environment') or {}).items()}
        for k, v in env.items():
            if k.endswith('_FILE') and v.startswith('/run/secrets/'): assert v.removeprefix('/run/secrets/') in s['secrets'], f"{name}: {k} = {v} is not mounted"
        if s.get('image', '').startswith('dataops-lab'):
            # no secret as a value: every setting that could hold one comes from a file
            for k in env:
                if k.startswith('DATAOPS_') and re.search(r'(SECRET|PASSWORD|API_KEY|__HOT|__COLD)$', k): raise AssertionError(f"{name}: {k} given as a value, not a file")
            s3 = check_settings({**docker_env(dockerfile_stages()[-1]), **env}, make_secrets(tmp_path / 'secrets'), '/run/secrets/', tmp_path)
            assert (s3.storage.hot.split('://')[0], s3.storage.cold.split('://')[0], s3.storage.blob.split('://')[0]) == ('redis', 'postgresql', 's3')
    assert svc['dask-worker']['command'][:3] == ['dask', 'worker', svc['api']['environment']['DATAOPS_BATCH__SCHEDULER']]
    for name in c['secrets']: assert (c['secrets'][name]['file']).startswith('./secrets/')
    written = {p.name for p in make_secrets(tmp_path / 'all').iterdir()}
    assert set(c['secrets']) <= written, f"deploy/make-secrets.sh does not write {set(c['secrets']) - written}"

def test_setting_names_are_checked():
    "the check above refuses a name Settings does not have"
    assert setting_of('DATAOPS_API__JWT_SECRET_FILE') == ('api', 'jwt_secret')
    assert setting_of('DATAOPS_LOGGING__FILE') == ('logging', 'file')
    for bad in ('DATAOPS_API__PORTT', 'DATAOPS_STORAGE__HOT_FILES', 'DATAOPS_CACHE__URL', 'DATAOPS_API_PORT'):
        with pytest.raises(AssertionError): setting_of(bad)

# ---------------------------------------------------------------- Kubernetes

@pytest.mark.parametrize('version', K8S_VERSIONS)
def test_k8s_manifests_are_valid_against_the_kubernetes_schemas(version):
    "kubernetes-validate's schemas (shipped in the package, strict: unknown fields are errors)"
    from kubernetes_validate import utils
    docs = k8s_docs()
    assert {d['kind'] for _, d in docs} >= {'Deployment', 'Service', 'HorizontalPodAutoscaler', 'ConfigMap', 'Secret', 'Job'}
    for f, d in docs: utils.validate(d, version, strict=True)
    f, d = next((f, d) for f, d in docs if d['kind'] == 'Deployment')
    bad = json.loads(json.dumps(d))
    c = bad['spec']['template']['spec']['containers'][0]
    c['readinesProbe'] = c.pop('readinessProbe')
    with pytest.raises(utils.ValidationError): utils.validate(bad, version, strict=True)

def test_k8s_objects_reference_each_other_and_probe_the_api(tmp_path):
    docs = [d for _, d in k8s_docs()]
    by = lambda kind: {d['metadata']['name']: d for d in docs if d['kind'] == kind}
    deps, cms, secs = by('Deployment'), by('ConfigMap'), by('Secret')
    (secret,) = secs.values()
    api = deps['dataops-lab-api']
    c = api['spec']['template']['spec']['containers'][0]
    assert c['args'] == ['dataops-lab', 'serve']
    assert (c['readinessProbe']['httpGet']['path'], c['livenessProbe']['httpGet']['path']) == ('/ready', '/health')
    assert {p['containerPort'] for p in c['ports']} == {int(docker_env(dockerfile_stages()[-1])['DATAOPS_API__PORT'])}
    assert any('dask' in n and 'worker' in n for n in deps)
    pods = [d['spec']['template'] for d in docs if d['kind'] in ('Deployment', 'Job')]
    for pod in pods:
        spec = pod['spec']
        assert spec['securityContext']['runAsNonRoot'] is True
        vols = {v['name']: v for v in spec.get('volumes', [])}
        for ctr in spec['containers']:
            assert ctr['resources']['requests'], ctr['name']
            env = {}
            for ref in ctr.get('envFrom', []): env.update(cms[ref['configMapRef']['name']]['data'])
            mounts = {m['mountPath']: vols[m['name']] for m in ctr.get('volumeMounts', [])}
            for k, v in env.items():
                if k.endswith('_FILE') or k == 'AWS_SHARED_CREDENTIALS_FILE':
                    if v == '/dev/null': continue
                    d, key = v.rsplit('/', 1)
                    assert d in mounts and mounts[d]['secret']['secretName'] in secs, f"{ctr['name']}: {k} = {v} is not a mounted secret"
                    items = mounts[d]['secret'].get('items')
                    assert key in secret['stringData'] and (items is None or key in {i['path'] for i in items}), f"{ctr['name']}: {k} = {v}: no such key"
    for s in by('Service').values():
        assert any(all(d['spec']['template']['metadata']['labels'].get(k) == v for k, v in s['spec']['selector'].items()) for d in deps.values()), s['metadata']['name']
    for h in by('HorizontalPodAutoscaler').values(): assert h['spec']['scaleTargetRef']['name'] in deps
    # the ConfigMap's settings exist and validate, with the Secret's keys as files (values from deploy/make-secrets.sh)
    (cm,) = cms.values()
    s = check_settings(cm['data'], make_secrets(tmp_path / 'secrets'), '/run/secrets/dataops/', tmp_path)
    assert s.batch.scheduler == 'tcp://dataops-lab-dask-scheduler:8786' and 'dataops-lab-dask-scheduler' in by('Service')
    # kustomization lists every manifest but the Job (run on its own, per deployment and upgrade)
    listed = set(yaml.safe_load((K8S / 'kustomization.yaml').read_text())['resources'])
    assert listed == {f.name for f in K8S.glob('*.yaml')} - {'kustomization.yaml', 'init-job.yaml'}

# ---------------------------------------------------------------- the guide

def test_the_guide_is_linked_and_has_the_checklist():
    assert '(deploy/README.md)' in (ROOT / 'README.md').read_text()
    guide = (DEPLOY / 'README.md').read_text()
    for part in ('**TLS**', '**Secrets**', '**Backups and point-in-time recovery**', '**Lifecycle**', '**Scaling**', '**Upgrades**', '**Not exercised on a real cluster'):
        assert part in guide, part
    # every file the guide's table names exists
    for name in re.findall(r'^\| `([^`]+)` \|', guide, flags=re.M):
        if '/' in name or '.' in name: assert (DEPLOY / name).exists(), name
