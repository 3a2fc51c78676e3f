"""`dataops-lab storage init` and `storage check` on the production tiers, as a user runs them: the command in a
child process, the servers the test session starts (redis-server, PostgreSQL, moto's S3 and DynamoDB over HTTP).
What each protection did is read back from the server itself, not from our output."""
import os, subprocess, sys, uuid
from pathlib import Path
import boto3
import pytest
from conftest import write_ini

def cli(ini: Path, *args: str) -> str:
    r = subprocess.run([str(Path(sys.executable).parent / 'dataops-lab'), '--settings', str(ini), 'storage', *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout

def settings_of(ini: Path) -> dict:
    return dict(l.split(' = ', 1) for l in ini.read_text().splitlines() if ' = ' in l)

@pytest.mark.parametrize('tier', ['postgres', 'aws'])
def test_storage_init_sets_the_protections_once(tier, request, tmp_path, moto_server, postgres_server):
    ini = write_ini(tmp_path, tier, request)
    blob = settings_of(ini)['blob']
    ini.write_text(ini.read_text().replace(blob, blob + '&archive_days=400'))
    bucket = blob.split('://', 1)[1].split('/', 1)[0]
    first = cli(ini, 'init')
    assert 'versioning: turned on' in first and 'default encryption: set to AES256' in first, first
    assert 'expire data/archives/ after 400 days' in first and 'abort unfinished multipart uploads under data/ after 7 days' in first, first
    s3 = boto3.client('s3', endpoint_url=moto_server.endpoint, region_name='us-east-1')
    assert s3.get_bucket_versioning(Bucket=bucket)['Status'] == 'Enabled'
    assert s3.get_bucket_encryption(Bucket=bucket)['ServerSideEncryptionConfiguration']['Rules'][0]['ApplyServerSideEncryptionByDefault']['SSEAlgorithm'] == 'AES256'
    rules = {r['ID']: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)['Rules']}
    assert rules['dataops-lab data/ archives']['Expiration'] == {'Days': 400} and rules['dataops-lab data/ archives']['Filter'] == {'Prefix': 'data/archives/'}
    assert rules['dataops-lab data/ old versions']['NoncurrentVersionExpiration'] == {'NoncurrentDays': 30}
    if tier == 'aws':
        ddb = boto3.client('dynamodb', endpoint_url=moto_server.endpoint, region_name='us-east-1')
        prefix = settings_of(ini)['table_prefix']
        names = [n for page in ddb.get_paginator('list_tables').paginate() for n in page['TableNames'] if n.startswith(prefix)]
        assert len(names) >= 5 and 'point-in-time recovery: turned on' in first, first
        for n in names:
            assert ddb.describe_continuous_backups(TableName=n)['ContinuousBackupsDescription']['PointInTimeRecoveryDescription']['PointInTimeRecoveryStatus'] == 'ENABLED', n
        ttl = ddb.describe_time_to_live(TableName=prefix + 'dataops_sessions')['TimeToLiveDescription']
        assert (ttl['TimeToLiveStatus'], ttl['AttributeName']) == ('ENABLED', 'expires_at')
    else:
        assert 'created table' in first and 'created index' in first, first
    second = cli(ini, 'init')
    changed = [l for l in second.splitlines() if any(w in l for w in ('turned on', 'set to', 'created', 'added', 'switched'))]
    assert changed == [], second  # idempotent: the second run finds everything in place
    assert postgres_server.password not in first + second

def test_storage_check_warns_about_servers_that_keep_nothing(request, tmp_path, postgres_server):
    "The test servers are set up to lose data (Redis: no RDB, no AOF; PostgreSQL: fsync off): check says so, and passes"
    ini = write_ini(tmp_path, 'postgres', request)
    cli(ini, 'init')
    out = cli(ini, 'check')
    warnings = [l for l in out.splitlines() if l.startswith('warning: ')]
    assert any('Redis at redis://127.0.0.1' in w and 'keeps nothing on disk' in w for w in warnings), out
    assert any('PostgreSQL at' in w and 'fsync=off' in w for w in warnings), out
    assert len([w for w in warnings if 'fsync=off' in w]) == 1, "one warning per server, not one per table"
    assert out.strip().endswith(f"{len(warnings)} warning(s) above") and postgres_server.password not in out

def test_storage_check_is_quiet_on_the_embedded_default(tmp_path):
    ini = write_ini(tmp_path, 'embedded')
    os.chdir(tmp_path)
    cli(ini, 'init')
    assert cli(ini, 'check').strip() == 'ok: every backend is reachable and provisioned'
