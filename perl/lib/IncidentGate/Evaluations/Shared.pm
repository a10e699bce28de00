package IncidentGate::Evaluations::Shared;
# What the web UI worker processes of one openQA instance share about live evaluations, in a
# directory of their own: the places (an evaluation holds one of the lock files), the last verdict
# of each submission, and when openQA last told any of them that something changed. Under
# `prefork -c 1` an evaluating worker serves nobody else until its child has asked openQA, which
# only the other workers can answer: a bound per worker cannot keep all of them from evaluating at
# once, and then no child gets an answer until its HTTP timeout.
use Mojo::Base -base, -signatures;

use Fcntl qw(:flock O_RDWR O_CREAT);
use File::Path ();
use File::Spec;
use File::Temp ();
use Mojo::JSON qw(decode_json encode_json);
use Time::HiRes ();

has 'dir';
# verdict files not written for this long are removed now and then
has keep_s => 86400;

# A directory of a name nobody can take first (created 0700 under TMPDIR), made by the process
# whose forks are the workers (the prefork manager), removed when that process ends.
sub create ($class, %o) {
    my $dir = File::Temp::tempdir('incident-gate-XXXXXXXX', TMPDIR => 1);
    my $self = $class->new(dir => $dir, owner => $$, %o);
    $self->check;
    return $self;
}

sub DESTROY ($self) {
    File::Path::remove_tree($self->{dir}) if ($self->{owner} // 0) == $$;
}

# That the directory is ours alone (0700, not a link, our uid) and holds the change file, or dies
# naming why; once per process.
sub check ($self) {
    return 1 if ($self->{checked_pid} // 0) == $$;
    my $dir = $self->dir;
    my @st = lstat $dir or die "cannot use $dir: $!\n";
    die "$dir is not a directory of this user's alone\n"
      unless -d _ && !-l _ && $st[4] == $< && ($st[2] & 0077) == 0;
    $self->changed unless -e $self->_changed_file;
    $self->{checked_pid} = $$;
    return 1;
}

# One of $places places, held until release($place), or undef when all are taken; dies when the
# lock files cannot be opened. flock: a worker that dies releases its own.
sub acquire ($self, $places) {
    $self->check;
    $self->forget if ($self->{fh_pid} // 0) != $$;
    $self->{fh_pid} = $$;
    for my $i (0 .. $places - 1) {
        next if $self->{held}{$i};
        my $fh = $self->{fh}[$i] //= do {
            sysopen(my $fh, File::Spec->catfile($self->dir, "place-$i"), O_RDWR | O_CREAT, 0600)
              or die "cannot open a place in ${\$self->dir}: $!\n";
            $fh;
        };
        if (flock $fh, LOCK_EX | LOCK_NB) {
            $self->{held}{$i} = 1;
            return $i;
        }
    }
    return undef;
}

sub release ($self, $place) {
    return unless defined $place && delete $self->{held}{$place};
    flock $self->{fh}[$place], LOCK_UN;
}

# In a forked child (the evaluation's): its copies of the places' files closed, so that a place
# is not kept by a child that outlives the worker which took it (closing a copy releases nothing).
sub forget ($self) {
    delete @$self{qw(fh held)};
}

sub _changed_file ($self) { File::Spec->catfile($self->dir, 'changed') }

# openQA told one of the workers that something changed; dies if the others cannot be told. The
# time is written as Time::HiRes gives it: a file system keeping whole seconds cuts it, which
# changed_at allows for.
sub changed ($self) {
    my $file = $self->_changed_file;
    my $now = Time::HiRes::time();
    return if Time::HiRes::utime($now, $now, $file);
    sysopen(my $fh, $file, O_RDWR | O_CREAT, 0600) or die "cannot write $file: $!\n";
    close $fh;
    Time::HiRes::utime($now, $now, $file) or die "cannot write $file: $!\n";
}

# When openQA last told any worker that something changed (epoch seconds); dies if that cannot be
# read (the caller then takes it as just now). A time in whole seconds may have been cut by up to
# one: it counts as a second later.
sub changed_at ($self) {
    $self->check;
    my $at = (Time::HiRes::stat($self->_changed_file))[9] // die "cannot read ${\$self->_changed_file}: $!\n";
    return $at == int $at ? $at + 1 : $at;
}

sub _file ($self, $key) { File::Spec->catfile($self->dir, 'verdict-' . ($key =~ s/[^0-9a-z]/_/gr) . '.json') }

# The last verdict of $key any worker kept: {text, at, started, no_jobs}, or undef.
sub last_verdict ($self, $key) {
    $self->check;
    open(my $fh, '<', $self->_file($key)) or return undef;
    local $/;
    my $known = eval { decode_json(scalar <$fh>) };
    return ref $known eq 'HASH' && (grep { defined $known->{$_} } qw(text at started)) == 3 ? $known : undef;
}

# Keeps $known as the last verdict of $key: written whole (a temporary file renamed), so that a
# reader never sees half of it.
sub keep ($self, $key, $known) {
    $self->check;
    my $file = $self->_file($key);
    my $tmp = "$file.$$";
    open(my $fh, '>', $tmp) or return;
    print {$fh} encode_json($known);
    close $fh or return unlink $tmp;
    rename $tmp, $file or unlink $tmp;
    $self->_tidy if ++$self->{written} % 100 == 1;
}

sub _tidy ($self) {
    my $before = time - $self->keep_s;
    opendir(my $dh, $self->dir) or return;
    for my $name (grep {/^verdict-/} readdir $dh) {
        my $path = File::Spec->catfile($self->dir, $name);
        unlink $path if ((stat $path)[9] // $before) < $before;
    }
}

1;
