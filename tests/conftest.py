import os, sys
from pathlib import Path
import pytest
sys.path.insert(0, str(Path(__file__).parent))
from servers import RedisServer, MotoServer

# boto3 must never reach a real AWS account from the tests: fixed fake credentials, no config files.
os.environ.update(AWS_ACCESS_KEY_ID='testing', AWS_SECRET_ACCESS_KEY='testing', AWS_DEFAULT_REGION='us-east-1',
                  AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)

@pytest.fixture(scope='session')
def redis_server():
    "A private redis-server on a free loopback port (fails loudly if redis-server is missing)"
    srv = RedisServer().start()
    yield srv
    srv.stop()

@pytest.fixture(scope='session')
def moto_server():
    "moto's S3 + DynamoDB HTTP server on a free loopback port"
    srv = MotoServer().start()
    yield srv
    srv.stop()
