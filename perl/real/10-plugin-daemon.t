# The plugin inside a real openQA web UI (Debian's openqa, `openqa daemon`): every scenario driven
# through openQA's REST API, decided from openQA's own events.
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest qw(library);
use IGTest::RealOpenQA;
use IGTest::Scenarios qw(new_world run_scenarios);

my $w = new_world(base => 10000);
my $oq = IGTest::RealOpenQA->start(
    workers => $ENV{IG_REAL_WORKERS} // 0, plugin => 1, exchange => $w->{exchange}, prefix => $w->{prefix},
    ini => {incident_gate => {library => library(), %{$w->gate_section(undef)}}});
ok((grep { /IncidentGate: libincident_gate/ } $oq->log_lines), 'openQA loaded the plugin')
  or diag join "\n", $oq->log_lines;

run_scenarios($w, $oq);

is_deeply [$oq->alarming_lines], [], 'openQA logged no errors';
done_testing;
