# `incident-gate listen` beside a real openQA web UI without our plugin: decided from the messages
# openQA's own AMQP plugin publishes.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(bin write_ini unique);
use IGTest::AMQP;
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world run_scenarios);

my $w = new_world(base => 20000);
my $oq = IGTest::RealOpenQA->start(exchange => $w->{exchange}, prefix => $w->{prefix});
my $queue = "igtest-listen-" . unique();
my $ini = write_ini({incident_gate => $w->gate_section($oq->url, amqp_queue => $queue, amqp_queue_durable => 'false')});
my $pid = fork // die "fork: $!";
if (!$pid) {
    open STDOUT, '>', "$ini.log" or die;
    open STDERR, '>&', \*STDOUT or die;
    exec bin(), 'listen', '--config', $ini or die "exec: $!";
}

run_scenarios($w, $oq);

kill TERM => $pid;
waitpid $pid, 0;
is $? >> 8, 0, 'the listener stops cleanly on SIGTERM';
my @log = split /\n/, Mojo::File::path("$ini.log")->slurp;
is_deeply [grep { /\bERROR\b/ } @log], [], 'the listener logged no errors';
is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
eval { IGTest::AMQP->new->delete_queue($queue) };
done_testing;
